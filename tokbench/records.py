"""Durable per-clip records: one JSON line per finished (configuration, clip) pair, flushed and fsynced before the
next pair starts, so a run killed at any moment loses at most the pair in progress.

Each process (rank) appends to its own ``records.rank<r>.jsonl`` in the output folder; readers merge every rank's
file. A record is a flat dict: ``config_id``, ``clip`` (the clip's index in the dataset), ``clip_id``, ``video``,
``frames`` (per-frame kind, kept tokens, step ms, ...), ``wall_s``, then what the metrics need (detections and
targets per frame, logits per clip, or per-clip fidelity sums), or ``error`` where the pair failed.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Iterator
from pathlib import Path

import torch

PATTERN = "records.rank*.jsonl"


def records_path(out: Path, rank: int) -> Path:
    return out / f"records.rank{rank}.jsonl"


class RecordWriter:
    """Appends records to one JSON-lines file durably (flush + fsync per record).

    A partial last line left by a killed process is cut off first, so the next record starts on its own line.
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        _drop_partial_tail(path)

    def __call__(self, record: dict) -> None:
        line = json.dumps(record, separators=(",", ":")) + "\n"
        with self.path.open("a") as f:
            f.write(line)
            f.flush()
            os.fsync(f.fileno())


def _drop_partial_tail(path: Path) -> None:
    if not path.exists() or path.stat().st_size == 0:
        return
    data = path.read_bytes()
    end = data.rfind(b"\n") + 1
    if end < len(data):
        with path.open("r+b") as f:
            f.truncate(end)
            f.flush()
            os.fsync(f.fileno())


def read_records(paths: Iterable[Path]) -> Iterator[dict]:
    """Every complete record of ``paths`` in file order; a torn or unreadable line is skipped."""
    for path in paths:
        if not path.exists():
            continue
        with path.open() as f:
            for line in f:
                if not line.endswith("\n"):
                    continue
                try:
                    yield json.loads(line)
                except json.JSONDecodeError:
                    continue


def all_records(out: Path) -> Iterator[dict]:
    """The records of every rank in ``out``."""
    return read_records(sorted(out.glob(PATTERN)))


def merge(records: Iterable[dict]) -> dict[tuple[str, int], dict]:
    """One record per (config_id, clip): a finished record wins over a failed one, else the first one read."""
    merged: dict[tuple[str, int], dict] = {}
    for rec in records:
        key = (rec["config_id"], rec["clip"])
        if key not in merged or (merged[key].get("error") and not rec.get("error")):
            merged[key] = rec
    return merged


def job_records(out: Path, config_id: str, clips: Iterable[int]) -> dict[int, dict]:
    """One configuration's records of ``clips`` (clip -> record, merged over ranks); other configurations' lines
    are skipped unparsed (a record's line starts with its ``config_id``), so memory holds one configuration."""
    prefix = '{"config_id":' + json.dumps(config_id)
    wanted = set(clips)
    lines = (line for path in sorted(out.glob(PATTERN)) for line in _lines(path) if line.startswith(prefix))
    records = []
    for line in lines:
        try:
            rec = json.loads(line)
        except json.JSONDecodeError:
            continue
        if rec["clip"] in wanted:
            records.append(rec)
    return {clip: rec for (_, clip), rec in merge(records).items()}


def _lines(path: Path) -> Iterator[str]:
    with path.open() as f:
        yield from (line for line in f if line.endswith("\n"))


def finished_pairs(out: Path) -> set[tuple[str, int]]:
    """(config_id, clip) pairs with a record and no error (records are read one at a time, not kept)."""
    return {(rec["config_id"], rec["clip"]) for rec in all_records(out) if not rec.get("error")}


# ----------------------------------------------------------------------------------------------- compact tensors


def detections_to_json(dets: dict[str, torch.Tensor]) -> dict:
    """``{"boxes" [M, 4], "scores" [M], "labels" [M]}`` (or targets without scores) -> lists; float32 values
    survive JSON exactly (a float32 is exactly representable as a double)."""
    return {k: v.detach().cpu().flatten().tolist() for k, v in dets.items()}


def detections_from_json(dets: dict) -> dict[str, torch.Tensor]:
    """Inverse of ``detections_to_json``: boxes ``[M, 4]`` float32, scores float32, labels int64."""
    out = {}
    for k, v in dets.items():
        if k == "boxes":
            out[k] = torch.tensor(v, dtype=torch.float32).reshape(-1, 4)
        elif k == "labels":
            out[k] = torch.tensor(v, dtype=torch.int64)
        else:
            out[k] = torch.tensor(v, dtype=torch.float32)
    return out
