"""Rows from records: a job's frame counts, metrics and GMACs, computed from its per-clip records.

Metrics that decompose per clip come from per-clip sums; mAP50 and per-video classification are computed here from
the recorded per-frame detections and per-clip logits, once, over every clip (whichever rank ran it).
"""

from __future__ import annotations

import statistics
import traceback
from collections.abc import Iterable

import numpy as np
import torch
import torch.nn.functional as F

from tokbench import intervals
from tokbench.engine import FULL, PRUNED, RESET
from tokbench.errors import DataError
from tokbench.flop_table import cost_columns, kind_costs
from tokbench.jobs import Job
from tokbench.metrics import dense_targets
from tokbench.models.zoo import LoadedModel
from tokbench.records import detections_from_json


def frame_counts(frames: list[dict]) -> dict:
    """Frame counts per kind and their fractions, and the step timing, from per-frame records; a reset is full (all
    patches) or pattern (a fixed subset). ``frac_full_frames`` counts the frames processed in full: the first frame
    of every clip and the full resets."""
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
        # clips per batched engine step (step_ms is the batched step's time / clip_batch); the largest batch run
        "clip_batch": max((f.get("clip_batch", 1) for f in frames), default=1),
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


RESAMPLES = 1000  # bootstrap resamples of the clips (videos for multi-view classification) per row
LEVEL = 0.95


def summarise(loaded: LoadedModel, job: Job, records: dict[int, dict], views: int = 1,
              dense: dict[int, dict] | None = None, resamples: int = RESAMPLES, seed: int = 0,
              samples: dict[str, np.ndarray] | None = None) -> dict:
    """Frame counts, timings and metrics of a job from its records (clip -> record, every clip run); ``dense``
    the dense job's records at the same sampling (fidelity). Every metric gets a 95 % bootstrap interval over the
    clips (``<metric>_ci_low`` / ``_ci_high``): ``resamples`` resamples drawn with ``seed``, the same for every
    job run on the same clips, so two jobs' samples pair up (``paired``); mAP is recomputed on each resample.
    ``samples``, if given, receives each metric's per-resample values ``[R]``."""
    ordered = [records[c] for c in sorted(records)]
    frames = [f for r in ordered for f in r["frames"]]
    videos = [r["video"] for r in ordered]
    if any(len(set(videos[v : v + views])) > 1 for v in range(0, len(videos), views)):
        raise DataError(f"the dataset's clips do not come in runs of {views} views of one video")
    summary = frame_counts(frames) | {"clips_run": len(ordered), "videos_run": len(ordered) // views}
    fidelity = dense is not None and not job.dense and all(c in dense for c in records)
    units = len(ordered) // views if loaded.kind == "action" else len(ordered)
    weights = np.ones((1, units), np.int64)
    if resamples:
        weights = np.vstack([weights, intervals.resample_weights(units, resamples, seed)])
    found = _metric_samples(loaded.kind, job, ordered, views, [dense[c] for c in sorted(records)] if fidelity
                            else None, weights)
    for name, values in found.items():
        summary[name] = float(values[0])
        if resamples:
            summary[f"{name}_ci_low"], summary[f"{name}_ci_high"] = intervals.interval(values[1:], LEVEL)
        if samples is not None:
            samples[name] = values[1:]
    if resamples:
        summary |= {"ci_resamples": resamples, "ci_level": LEVEL}
    return summary


def _metric_samples(kind: str, job: Job, ordered: list[dict], views: int, dense: list[dict] | None,
                    weights: np.ndarray) -> dict[str, np.ndarray]:
    """Each metric on the original sample (row 0 of ``weights [1 + R, units]``, all ones) and on every resample:
    ``{metric: [1 + R]}``. Units are clips, or videos for ``action``."""
    out: dict[str, np.ndarray] = {}
    if kind == "detect":
        preds = [[detections_from_json(d) for d in r["detections"]] for r in ordered]
        if all("targets" in r for r in ordered):
            table = intervals.DetectionTable.from_clips(preds, [[detections_from_json(d) for d in r["targets"]]
                                                                for r in ordered])
            out["map50"] = table.map50(weights)
            out |= {f"map50_{speed}": values for speed, values in table.map50_by_motion(weights).items()}
        if dense is not None:
            pseudo = [[dense_targets(detections_from_json(d)) for d in r["detections"]] for r in dense]
            out["map50_vs_dense"] = intervals.DetectionTable.from_clips(preds, pseudo).map50(weights)
    elif kind == "action":
        logits = video_logits(dict(enumerate(ordered)), views)
        labels = [r["label"] for r in ordered][::views]
        if all(label is not None for label in labels):
            out["top1"] = intervals.top1((logits.argmax(-1) == torch.tensor(labels)).numpy(), weights)
        if dense is not None:
            reference = video_logits(dict(enumerate(dense)), views)
            out["top1_agreement"] = intervals.top1((logits.argmax(-1) == reference.argmax(-1)).numpy(), weights)
            kl = F.kl_div(logits.log_softmax(-1), reference.log_softmax(-1), log_target=True, reduction="none")
            out["kl_to_dense"] = intervals.ratio(kl.sum(-1).numpy(), np.ones(len(kl)), weights)
    elif not job.dense and all("agree" in r for r in ordered):
        n = np.array([len(r["frames"]) for r in ordered], dtype=np.float64)
        out["top1_agreement"] = 100.0 * intervals.ratio(np.array([r["agree"] for r in ordered], float), n, weights)
        out["kl_to_dense"] = intervals.ratio(np.array([r["kl_sum"] for r in ordered]), n, weights)
    elif not job.dense and all("cos_pooled_sum" in r for r in ordered):
        for name in ("pooled", "tokens"):
            sums = np.array([r[f"cos_{name}_sum"] for r in ordered])
            out[f"cosine_{name}"] = intervals.ratio(sums, np.array([r[f"cos_{name}_n"] for r in ordered], float),
                                                    weights)
    return out


def build_row(loaded: LoadedModel, job: Job, records: dict[int, dict], *, views: int = 1,
              dense: dict[int, dict] | None = None, sample: torch.Tensor | None = None,
              resamples: int = RESAMPLES, samples: dict[str, np.ndarray] | None = None) -> dict:
    """A job's row: naming columns, frame counts, metrics with their bootstrap intervals (``resamples``;
    ``samples`` receives the per-resample values), GMACs (fvcore, traced on ``sample`` where given), ``error``
    (the first failed clip's, else empty) and ``wall_s`` (summed over its records)."""
    row = {"config_id": job.config_id, **job.identity, "convention": "fvcore", "error": job.error}
    failed = [r for c, r in sorted(records.items()) if r.get("error")]
    if job.error or failed:
        if failed:
            row |= {"error": failed[0]["error"], "traceback": failed[0].get("traceback", "")}
    else:
        try:
            summary = summarise(loaded, job, records, views, dense, resamples, samples=samples)
            row |= summary
            if sample is not None:
                row |= cost_columns(loaded, job.config, kind_costs(loaded, job.config, sample), summary)
        except (KeyboardInterrupt, SystemExit):
            raise
        except Exception as err:
            row |= {"error": f"{type(err).__name__}: {err}", "traceback": traceback.format_exc(limit=3)}
    row["wall_s"] = round(sum(r.get("wall_s", 0.0) for r in records.values()), 2)
    return row
