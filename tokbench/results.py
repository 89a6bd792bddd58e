"""Result rows and provenance: one tidy row per configuration, appended once all its clips have records.

``rows.csv`` holds the finished configurations of an output folder: a re-run reads the ``config_id`` column and
skips what is done; what is not yet done resumes from the per-clip records (``tokbench.records``), so an
interrupted grid loses at most the clip in progress. ``meta.json`` records versions, device, threads, seeds and the
fully resolved configuration.
"""

from __future__ import annotations

import csv
import hashlib
import json
import os
import platform
import subprocess
from pathlib import Path

import tokbench
from tokbench.errors import TokbenchError


class ExperimentMismatch(TokbenchError):
    """An output folder already holds rows of a different experiment."""


def config_id(config: dict) -> str:
    """Stable short hash of a resolved configuration (JSON with sorted keys)."""
    return hashlib.sha1(json.dumps(config, sort_keys=True, default=str).encode()).hexdigest()[:12]


def prepare_out_dir(path: Path) -> Path:
    """Create the folder (or fail with a one-line error if it cannot be written)."""
    try:
        path.mkdir(parents=True, exist_ok=True)
        probe = path / f".write-test.{os.getpid()}"  # one per process: torchrun ranks probe the folder together
        probe.write_text("")
        probe.unlink()
    except OSError as err:
        raise TokbenchError(f"cannot write to output folder {path}: {err.strerror or err}") from None
    return path


def finished_ids(rows_csv: Path) -> set[str]:
    """``config_id`` of every row already in ``rows.csv`` without an error."""
    if not rows_csv.exists():
        return set()
    with rows_csv.open(newline="") as f:
        return {r["config_id"] for r in csv.DictReader(f) if not r.get("error")}


def append_row(rows_csv: Path, row: dict) -> None:
    """Append one row, widening the header if the row brings new columns; flushed to disk before returning."""
    existing: list[dict] = []
    fields = list(row)
    if rows_csv.exists():
        with rows_csv.open(newline="") as f:
            reader = csv.DictReader(f)
            existing = list(reader)
            fields = list(reader.fieldnames or []) + [k for k in row if k not in (reader.fieldnames or [])]
    if existing and len(fields) != len(existing[0]):
        tmp = rows_csv.with_suffix(".tmp")
        with tmp.open("w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=fields)
            writer.writeheader()
            writer.writerows(existing + [row])
            f.flush()
            os.fsync(f.fileno())
        tmp.replace(rows_csv)
        return
    new = not rows_csv.exists()
    with rows_csv.open("a", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=fields)
        if new:
            writer.writeheader()
        writer.writerow(row)
        f.flush()
        os.fsync(f.fileno())


def _git_hash() -> str | None:
    try:
        out = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"],
            cwd=Path(tokbench.__file__).parent,
            capture_output=True,
            text=True,
            timeout=5,
        )
        return out.stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        return None


def provenance(**extra) -> dict:
    """Versions, device and threads of this process, plus ``extra`` (seeds, resolved configuration, ...)."""
    import fvcore
    import timm
    import torch

    return {
        "tokbench_version": tokbench.__version__,
        "git_hash": _git_hash(),
        "torch_version": torch.__version__,
        "timm_version": timm.__version__,
        "fvcore_version": getattr(fvcore, "__version__", "unknown"),
        "python": platform.python_version(),
        "device": torch.cuda.get_device_name(0) if torch.cuda.is_available() else f"cpu ({platform.machine()})",
        "threads": torch.get_num_threads(),
        "dtype": "float32",
        **extra,
    }


def write_meta(out: Path, meta: dict) -> None:
    (out / "meta.json").write_text(json.dumps(meta, indent=2, default=str) + "\n")


def check_experiment(out: Path, experiment: dict) -> None:
    """One ``--out`` folder holds one experiment (model, weights, data, input size, benchmark version, ...).

    If ``out`` already holds rows of a different experiment (``meta.json``'s ``experiment``), raise a one-line
    ``ExperimentMismatch`` naming the first difference, rather than blending two experiments into one table.
    """
    rows, meta_path = out / "rows.csv", out / "meta.json"
    if not rows.exists() or rows.stat().st_size == 0:
        return
    try:
        before = json.loads(meta_path.read_text()).get("experiment") if meta_path.exists() else None
    except (OSError, json.JSONDecodeError):
        before = None
    if before is None:
        raise ExperimentMismatch(f"{out} already holds rows of an unknown experiment (no experiment in meta.json); "
                                 "write to another --out or delete the folder")
    now = json.loads(json.dumps(experiment, default=str))
    for key in sorted(set(before) | set(now)):
        if before.get(key) != now.get(key):
            raise ExperimentMismatch(
                f"{out} holds rows of another experiment ({key}: {before.get(key)!r} there, {now.get(key)!r} now); "
                "use another --out"
            )
