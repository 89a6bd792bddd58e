"""One configuration end to end: a benchmark, a model, method settings -> per-frame records + summary metrics.

Clips run in order at batch 1 with fresh state per clip (docs/method.md 9.1). ``sampling=s`` keeps frames with
``index % s == 0`` of each clip, and the engine's t counts the kept frames (docs/method.md section 5). A dataset with
``views > 1`` (multi-view video classification, docs/method.md 9.2) yields each video as ``views`` consecutive clips,
each run with its own state; a video's prediction is the mean of its views' logits.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch

from tokbench.config import MethodConfig
from tokbench.engine import FULL, PRUNED, RESET, FrameRecord, StreamingEngine
from tokbench.errors import ConfigError, DataError
from tokbench.metrics import cosine, kl_to_dense, map50, map50_vs_dense, top1, top1_agreement
from tokbench.models.action import ViViTFactorised
from tokbench.models.detector import ViTDetector
from tokbench.models.zoo import LoadedModel, wrap_model

Progress = Callable[[int], None]  # called with the number of frames just processed


Outputs = Any  # what fidelity compares: detections, logits, or pooled + dense features (see ``run_model``)


@dataclass
class RunResult:
    """Per-frame records (JSON-ready dicts), the run's summary metrics, and its outputs (for fidelity)."""

    frames: list[dict]
    summary: dict
    outputs: Outputs = None


def _is_pattern_reset(rec: FrameRecord) -> bool:
    """A reset frame that kept a fixed pattern (classification, docs/method.md 5) rather than every patch."""
    return rec.kind == RESET and getattr(rec, "pattern", rec.num_kept < rec.num_patches)


def _frame_row(clip_id: str, index: int, rec: FrameRecord, step_ms: float) -> dict:
    return {
        "clip": clip_id,
        "frame": index,
        "t": rec.t,
        "kind": rec.kind,
        "pattern_reset": _is_pattern_reset(rec),
        "kept_tokens": rec.num_kept,
        "num_patches": rec.num_patches,
        "kept": None if rec.kept is None else rec.kept[0].tolist(),
        "step_ms": round(step_ms, 3),
        "degenerate_heatmap": rec.degenerate_heatmaps,
    }


def _summary(rows: list[dict]) -> dict:
    """Frame counts per kind and their fractions; a reset is full (all patches) or pattern (a fixed subset).

    ``frac_full_frames`` counts the frames processed in full: the first frame of every clip and the full resets.
    """
    frames = len(rows)
    full = sum(r["kind"] == FULL for r in rows)
    pattern = sum(r["kind"] == RESET and r["pattern_reset"] for r in rows)
    reset = sum(r["kind"] == RESET for r in rows) - pattern
    return {
        "frames_run": frames,
        "frames_full": full,
        "frames_reset": reset,
        "frames_pattern": pattern,
        "frames_pruned": sum(r["kind"] == PRUNED for r in rows),
        "frac_full_frames": (full + reset) / max(1, frames),
        "frac_pattern_frames": pattern / max(1, frames),
        "kept_tokens_mean": statistics.fmean(r["kept_tokens"] for r in rows) if rows else 0.0,
        "nan_heatmap_frames": sum(r["degenerate_heatmap"] for r in rows),
        "step_ms_median": statistics.median(r["step_ms"] for r in rows) if rows else 0.0,
    }


def _indices(num_frames: int, sampling: int, max_frames: int | None, tubelet: int = 1) -> list[int]:
    """First frame of every step: every ``sampling``-th step of ``tubelet`` consecutive frames."""
    if sampling < 1:
        raise ConfigError(f"frame stride must be >= 1, got {sampling}")
    idx = list(range(0, num_frames - tubelet + 1, sampling * tubelet))
    return idx if max_frames is None else idx[:max_frames]


def _stream(engine: StreamingEngine, dataset, loaded: LoadedModel, sampling: int, max_clips: int | None,
            max_frames: int | None, progress: Progress | None):
    """Per clip, fresh state, sampled steps in order at batch 1: yields ``(clip, [(index, record, step_ms)])``.

    ``max_clips`` counts videos: ``dataset.views`` clips each (1 without the attribute). Frames are read and
    normalised one step at a time (a clip may be longer than memory allows), outside the timed engine step.
    """
    t = loaded.tubelet
    num_clips = len(dataset) if max_clips is None else min(max_clips * _views(dataset), len(dataset))
    for c in range(num_clips):
        clip = dataset[c]
        state = engine.new_state(c)
        steps = []
        for i in _indices(clip.frames.shape[0], sampling, max_frames, t):
            frames = loaded.steps(clip.frames[i : i + t], clip.valid_hw)
            start = time.perf_counter()
            rec = engine.step(frames, state)
            steps.append((i, rec, (time.perf_counter() - start) * 1000))
            if progress:
                progress(1)
        yield clip, steps


def _views(dataset) -> int:
    return getattr(dataset, "views", 1)


def per_video(logits: torch.Tensor, views: int) -> torch.Tensor:
    """Logits per clip ``[videos * views, K]`` (each video's views consecutive) -> the mean over each video's views
    ``[videos, K]``: softmax of it is the video's prediction (docs/method.md 9.2)."""
    if logits.shape[0] % views:
        raise DataError(f"{logits.shape[0]} clips do not make whole videos of {views} views")
    return logits.unflatten(0, (-1, views)).mean(dim=1)


def run_model(
    loaded: LoadedModel,
    dataset,
    config: MethodConfig,
    *,
    sampling: int = 1,
    max_clips: int | None = None,
    max_frames: int | None = None,
    progress: Progress | None = None,
    reference: Outputs | None = None,
) -> RunResult:
    """Any resolved model on any dataset: labelled metrics where the data has labels, fidelity to ``reference``
    (the dense run's ``RunResult.outputs``) where given.

    Outputs per kind: ``detect`` detections per frame; ``action`` logits per video ``[videos, K]`` (the mean over
    its views' logits where the dataset has ``views > 1``; ``top1`` and fidelity are per video); ``classify``
    logits per frame ``[frames, K]``; ``features`` pooled ``[frames, C]`` and dense ``[frames, N', C]`` features.
    ``max_clips`` counts videos. The summary holds frame counts and step timings, not the run's wall time.
    """
    engine = loaded.engine(config)
    rows, preds, targets, logits, labels, pooled, tokens, videos = [], [], [], [], [], [], [], []
    views = _views(dataset)
    for clip, steps in _stream(engine, dataset, loaded, sampling, max_clips, max_frames, progress):
        videos.append(clip.video_id or clip.clip_id)  # per clip: the video it is a view of
        for i, rec, ms in steps:
            rows.append(_frame_row(clip.clip_id, i, rec, ms))
            if loaded.kind == "detect":
                preds.append({k: v.cpu() for k, v in rec.predictions[0].items()})
                if clip.targets is not None:
                    targets.append(clip.targets[i])
            elif loaded.kind == "classify":
                logits.append(rec.predictions.cpu())
            elif loaded.kind == "features":
                out = rec.predictions.cpu()
                pooled.append(out[:, 0] if engine.vit.has_class_token else out[:, engine.vit.num_prefix :].mean(1))
                tokens.append(out)
        if loaded.kind == "action":
            with torch.inference_mode():
                logits.append(loaded.model.temporal(torch.stack([rec.predictions for _, rec, _ in steps], dim=1)))
            if clip.label is not None:
                labels.append(clip.label)
    if any(len(set(videos[v : v + views])) > 1 for v in range(0, len(videos), views)):
        raise DataError(f"the dataset's clips do not come in runs of {views} views of one video")
    summary = _summary(rows) | {"clips_run": len(videos), "videos_run": len(videos) // views}
    if loaded.kind == "detect":
        outputs: Outputs = preds
        if targets:
            summary["map50"] = map50(preds, targets)
        if reference is not None:
            summary["map50_vs_dense"] = map50_vs_dense(preds, reference)
    elif loaded.kind == "features":
        outputs = {"pooled": torch.cat(pooled), "tokens": torch.cat(tokens)}
        if reference is not None:
            summary["cosine_pooled"] = cosine(outputs["pooled"], reference["pooled"])
            summary["cosine_tokens"] = cosine(outputs["tokens"], reference["tokens"])
    else:
        outputs = torch.cat(logits)
        if loaded.kind == "action" and views > 1:
            outputs, labels = per_video(outputs, views), labels[::views]
        if labels:
            summary["top1"] = top1(outputs, torch.tensor(labels))
        if reference is not None:
            summary["top1_agreement"] = top1_agreement(outputs, reference)
            summary["kl_to_dense"] = kl_to_dense(outputs, reference)
    return RunResult(rows, summary, outputs)


def run_detection(model: ViTDetector, dataset, config: MethodConfig, **kwargs) -> RunResult:
    """The benchmark detector on a labelled detection dataset: ``summary["map50"]`` over all frames run.

    Keyword arguments as ``run_model`` (``sampling``, ``max_clips``, ``max_frames``, ``progress``, ``reference``).
    """
    return run_model(wrap_model("detector", model), dataset, config, **kwargs)


def run_action(model: ViViTFactorised, dataset, config: MethodConfig, **kwargs) -> RunResult:
    """The benchmark action model: RGTP prunes the spatial model per step; ``summary["top1"]`` over clips."""
    return run_model(wrap_model("action", model), dataset, config, **kwargs)
