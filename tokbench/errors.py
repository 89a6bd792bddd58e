"""tokbench's error types. The CLI turns every ``TokbenchError`` into a one-line message and exit code 1."""

from __future__ import annotations

import difflib


class TokbenchError(Exception):
    """A problem the user can fix (bad option, missing file, unsupported model)."""


class ConfigError(TokbenchError, ValueError):
    """An invalid method or run setting."""


class UnsupportedModelError(TokbenchError):
    """A model whose architecture tokbench cannot drive faithfully."""


class DataError(TokbenchError):
    """Missing, unreadable or malformed input data."""


def unknown_name(kind: str, name: str, known: list[str] | tuple[str, ...]) -> TokbenchError:
    """An 'unknown <kind>' error that suggests the closest known names."""
    close = difflib.get_close_matches(name, list(known), n=3, cutoff=0.5)
    hint = f"; did you mean {', '.join(repr(c) for c in close)}?" if close else ""
    return TokbenchError(f"unknown {kind} {name!r}{hint}")
