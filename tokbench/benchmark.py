"""One configuration end to end: a benchmark, a model, method settings -> per-frame records + summary metrics.

Clips run in order at batch 1 with fresh state per clip (method.md 9.1). ``sampling=s`` keeps frames with
``index % s == 0`` of each clip, and the engine's t counts the kept frames (method.md section 5).
"""

from __future__ import annotations

import statistics
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass

import torch

from tokbench.config import MethodConfig
from tokbench.engine import FrameRecord, StreamingEngine
from tokbench.errors import ConfigError
from tokbench.metrics import map50, top1
from tokbench.models.action import SpatialStepTask, ViViTFactorised
from tokbench.models.action import normalize as action_normalize
from tokbench.models.detector import DetectionTask, ViTDetector
from tokbench.models.detector import normalize as det_normalize

Progress = Callable[[int], None]  # called with the number of frames just processed


@dataclass
class RunResult:
    """Per-frame records (JSON-ready dicts) and the run's summary metrics."""

    frames: list[dict]
    summary: dict


def _frame_row(clip_id: str, index: int, rec: FrameRecord, step_ms: float) -> dict:
    return {
        "clip": clip_id,
        "frame": index,
        "t": rec.t,
        "kind": rec.kind,
        "kept_tokens": rec.num_kept,
        "num_patches": rec.num_patches,
        "kept": None if rec.kept is None else rec.kept[0].tolist(),
        "step_ms": round(step_ms, 3),
        "degenerate_heatmap": rec.degenerate_heatmaps,
    }


def _summary(rows: list[dict], wall_s: float) -> dict:
    kinds = Counter(r["kind"] for r in rows)
    return {
        "frames": len(rows),
        "frames_full": kinds["full"],
        "frames_reset": kinds["reset"],
        "frames_pruned": kinds["pruned"],
        "frac_full_frames": (kinds["full"] + kinds["reset"]) / max(1, len(rows)),
        "kept_tokens_mean": statistics.fmean(r["kept_tokens"] for r in rows) if rows else 0.0,
        "nan_heatmap_frames": sum(r["degenerate_heatmap"] for r in rows),
        "step_ms_median": statistics.median(r["step_ms"] for r in rows) if rows else 0.0,
        "wall_s": round(wall_s, 2),
    }


def _indices(num_frames: int, sampling: int, max_frames: int | None) -> list[int]:
    if sampling < 1:
        raise ConfigError(f"frame stride must be >= 1, got {sampling}")
    idx = list(range(0, num_frames, sampling))
    return idx if max_frames is None else idx[:max_frames]


def _stream(engine: StreamingEngine, dataset, normalize, sampling: int, max_clips: int | None,
            max_frames: int | None, progress: Progress | None):
    """Per clip, fresh state, sampled frames in order at batch 1: yields ``(clip, [(index, record, step_ms)])``."""
    for c in range(len(dataset) if max_clips is None else min(max_clips, len(dataset))):
        clip = dataset[c]
        idx = _indices(clip.frames.shape[0], sampling, max_frames)
        frames = normalize(clip.frames[idx])
        state = engine.new_state()
        steps = []
        for j, i in enumerate(idx):
            start = time.perf_counter()
            rec = engine.step(frames[j : j + 1], state)
            steps.append((i, rec, (time.perf_counter() - start) * 1000))
            if progress:
                progress(1)
        yield clip, steps


def run_detection(
    model: ViTDetector,
    dataset,
    config: MethodConfig,
    *,
    sampling: int = 1,
    max_clips: int | None = None,
    max_frames: int | None = None,
    progress: Progress | None = None,
) -> RunResult:
    """Stream every (sampled) frame of the dataset's clips through the pruned detector; mAP50 over all frames."""
    task = DetectionTask(model, config.anchor_score_thr, config.anchor_clip_end, config.anchor_fallback)
    engine = StreamingEngine(model.backbone, config, task)
    rows, preds, targets = [], [], []
    start = time.perf_counter()
    for clip, steps in _stream(engine, dataset, det_normalize, sampling, max_clips, max_frames, progress):
        for i, rec, ms in steps:
            preds.append(rec.predictions[0])
            targets.append(clip.targets[i])
            confident = int((rec.predictions[0]["scores"] > 0.3).sum())
            rows.append(_frame_row(clip.clip_id, i, rec, ms) | {"detections": confident})
    summary = _summary(rows, time.perf_counter() - start) | {"map50": map50(preds, targets)}
    return RunResult(rows, summary)


def run_action(
    model: ViViTFactorised,
    dataset,
    config: MethodConfig,
    *,
    sampling: int = 1,
    max_clips: int | None = None,
    max_frames: int | None = None,
    progress: Progress | None = None,
) -> RunResult:
    """Prune the spatial model per step (class-token rollout), classify each clip with the temporal encoder."""
    engine = StreamingEngine(model.spatial, config, SpatialStepTask())
    rows, logits, labels = [], [], []
    start = time.perf_counter()
    for clip, steps in _stream(engine, dataset, action_normalize, sampling, max_clips, max_frames, progress):
        rows += [_frame_row(clip.clip_id, i, rec, ms) for i, rec, ms in steps]
        with torch.inference_mode():
            logits.append(model.temporal(torch.stack([rec.predictions for _, rec, _ in steps], dim=1)))
        labels.append(clip.label)
    summary = _summary(rows, time.perf_counter() - start) | {"top1": top1(torch.cat(logits), torch.tensor(labels))}
    return RunResult(rows, summary)
