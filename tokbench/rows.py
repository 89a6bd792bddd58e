"""Rows from records: a job's frame counts, metrics and GMACs, computed from its per-clip records.

Metrics that decompose per clip come from per-clip sums; mAP50 and per-video classification are computed here from
the recorded per-frame detections and per-clip logits, once, over every clip (whichever rank ran it).
"""

from __future__ import annotations

import statistics
import traceback
from collections.abc import Iterable
from typing import TYPE_CHECKING

import torch

from tokbench.config import MethodConfig
from tokbench.engine import FULL, PRUNED, RESET
from tokbench.errors import DataError
from tokbench.flop_table import fvcore_kind_costs, fvcore_temporal_head_gmacs, unit_columns, unit_of
from tokbench.metrics import kl_to_dense, map50, map50_vs_dense, top1, top1_agreement
from tokbench.models.zoo import LoadedModel
from tokbench.records import detections_from_json

if TYPE_CHECKING:
    from tokbench.pipeline import Job


def frame_counts(frames: list[dict]) -> dict:
    """Frame counts per kind and their fractions from per-frame records; a reset is full (all patches) or pattern
    (a fixed subset). ``frac_full_frames`` counts the frames processed in full: the first frame of every clip and
    the full resets."""
    n = len(frames)
    full = sum(f["kind"] == FULL for f in frames)
    pattern = sum(f["kind"] == RESET and f["pattern_reset"] for f in frames)
    reset = sum(f["kind"] == RESET for f in frames) - pattern
    return {
        "frames_run": n,
        "frames_full": full,
        "frames_reset": reset,
        "frames_pattern": pattern,
        "frames_pruned": sum(f["kind"] == PRUNED for f in frames),
        "frac_full_frames": (full + reset) / max(1, n),
        "frac_pattern_frames": pattern / max(1, n),
        "kept_tokens_mean": statistics.fmean(f["kept_tokens"] for f in frames) if frames else 0.0,
        "nan_heatmap_frames": sum(f["degenerate_heatmap"] for f in frames),
        "step_ms_median": statistics.median(f["step_ms"] for f in frames) if frames else 0.0,
    }


def per_video(logits: torch.Tensor, views: int) -> torch.Tensor:
    """Logits per clip ``[videos * views, K]`` (each video's views consecutive) -> the mean over each video's views
    ``[videos, K]``: softmax of it is the video's prediction (docs/method.md 9.2)."""
    if logits.shape[0] % views:
        raise DataError(f"{logits.shape[0]} clips do not make whole videos of {views} views")
    return logits.unflatten(0, (-1, views)).mean(dim=1)


def complete(job: Job, records: dict[int, dict], indices: Iterable[int]) -> bool:
    """Whether ``records`` (clip -> record) of ``job`` hold a finished record of every clip, or an error."""
    return any(r.get("error") for r in records.values()) or all(c in records for c in indices)


def video_logits(records: dict[int, dict], views: int = 1) -> torch.Tensor:
    """An action job's logits per video ``[videos, K]`` from its records (the mean over each video's views)."""
    logits = torch.tensor([records[c]["logits"] for c in sorted(records)])
    return per_video(logits, views) if views > 1 else logits


def summarise(loaded: LoadedModel, job: Job, records: dict[int, dict], views: int = 1,
              dense: dict[int, dict] | None = None) -> dict:
    """Frame counts, timings and metrics of a job from its records (clip -> record, every clip run); ``dense``
    the dense job's records at the same sampling (fidelity)."""
    ordered = [records[c] for c in sorted(records)]
    frames = [f for r in ordered for f in r["frames"]]
    videos = [r["video"] for r in ordered]
    if any(len(set(videos[v : v + views])) > 1 for v in range(0, len(videos), views)):
        raise DataError(f"the dataset's clips do not come in runs of {views} views of one video")
    summary = frame_counts(frames) | {"clips_run": len(ordered), "videos_run": len(ordered) // views}
    fidelity = dense is not None and not job.dense and all(c in dense for c in records)
    if loaded.kind == "detect":
        preds = [detections_from_json(d) for r in ordered for d in r["detections"]]
        if all("targets" in r for r in ordered):
            summary["map50"] = map50(preds, [detections_from_json(d) for r in ordered for d in r["targets"]])
        if fidelity:
            reference = [detections_from_json(d) for c in sorted(records) for d in dense[c]["detections"]]
            summary["map50_vs_dense"] = map50_vs_dense(preds, reference)
    elif loaded.kind == "action":
        logits, labels = video_logits(records, views), [r["label"] for r in ordered][::views]
        if all(label is not None for label in labels):
            summary["top1"] = top1(logits, torch.tensor(labels))
        if fidelity:
            reference = video_logits({c: dense[c] for c in records}, views)
            summary["top1_agreement"] = top1_agreement(logits, reference)
            summary["kl_to_dense"] = kl_to_dense(logits, reference)
    elif not job.dense and all("agree" in r for r in ordered):
        n = len(frames)
        summary["top1_agreement"] = 100.0 * sum(r["agree"] for r in ordered) / max(1, n)
        summary["kl_to_dense"] = sum(r["kl_sum"] for r in ordered) / max(1, n)
    elif not job.dense and all("cos_pooled_sum" in r for r in ordered):
        for name in ("pooled", "tokens"):
            n = sum(r[f"cos_{name}_n"] for r in ordered)
            summary[f"cosine_{name}"] = sum(r[f"cos_{name}_sum"] for r in ordered) / max(1, n)
    return summary


def build_row(loaded: LoadedModel, job: Job, records: dict[int, dict], *, views: int = 1,
              dense: dict[int, dict] | None = None, sample: torch.Tensor | None = None) -> dict:
    """A job's row: naming columns, frame counts, metrics, GMACs (fvcore, traced on ``sample`` where given),
    ``error`` (the first failed clip's, else empty) and ``wall_s`` (summed over its records)."""
    row = {"config_id": job.config_id, **job.identity, "convention": "fvcore", "error": job.error}
    failed = [r for c, r in sorted(records.items()) if r.get("error")]
    if job.error or failed:
        if failed:
            row |= {"error": failed[0]["error"], "traceback": failed[0].get("traceback", "")}
    else:
        try:
            summary = summarise(loaded, job, records, views, dense)
            row |= summary
            if sample is not None:
                row |= cost_columns(loaded, job.config, kind_costs(loaded, job.config, sample), summary)
        except (KeyboardInterrupt, SystemExit):
            raise
        except Exception as err:
            row |= {"error": f"{type(err).__name__}: {err}", "traceback": traceback.format_exc(limit=3)}
    row["wall_s"] = round(sum(r.get("wall_s", 0.0) for r in records.values()), 2)
    return row


# ----------------------------------------------------------------------------------------------------- GMACs


_COSTS: dict[tuple[int, MethodConfig], dict] = {}
_HEADS: dict[tuple[int, str], float] = {}


def kind_costs(loaded: LoadedModel, config: MethodConfig, sample: torch.Tensor) -> dict:
    """fvcore costs per frame kind of ``config`` (seed aside) traced on ``sample`` (one step of the data)."""
    key = (id(loaded.model), config.replace(seed=0))
    if key not in _COSTS:
        _COSTS[key] = fvcore_kind_costs(loaded, loaded.engine(config).resolved, sample)[0]
    return _COSTS[key]


def cost_columns(loaded: LoadedModel, config: MethodConfig, per_kind: dict, summary: dict) -> dict:
    """GMACs of the frames that ran (fvcore): per frame for detection (all frames, first and reset frames
    included), per clip for classification (docs/method.md 8: views x (spatial steps + temporal encoder +
    classifier), averaged over the videos run); per-kind costs and the overhead split in the same unit."""
    counts = {"full": summary["frames_full"], "reset": summary["frames_reset"], "pattern": summary["frames_pattern"],
              "pruned": summary["frames_pruned"]}
    unit = unit_of(loaded)
    if unit == "clip":
        clips = max(1, summary.get("clips_run", 1))
        views = clips / max(1, summary.get("videos_run", clips))
        counts = {k: c / clips for k, c in counts.items()}
        columns = unit_columns(per_kind, counts, unit=unit, views=views, head_gmacs=_head_gmacs(loaded, config))
    else:
        columns = unit_columns(per_kind, counts, unit=unit)
    kept = per_kind["pruned"] if "pruned" in per_kind else per_kind["full"]
    return {"unit": unit, **columns, "keep_tokens": kept.kept_tokens}


def _head_gmacs(loaded: LoadedModel, config: MethodConfig) -> float:
    """fvcore GMACs of one view's temporal encoder + classifier (0 where each step carries its own head)."""
    key = (id(loaded.model), config.sdpa_flops)
    if key not in _HEADS:
        _HEADS[key] = fvcore_temporal_head_gmacs(loaded, config.sdpa_flops)
    return _HEADS[key]
