"""One way to run configurations: resolve each (configuration, sampling) into a ``Job``, stream the data clip by
clip running every job on a clip before the next clip is read, append one durable record per (job, clip), and
build each job's row from its records.

Clip-major order keeps memory flat in the number of clips: one clip (and, for fidelity on classification and
features, the dense model's outputs on that clip only) is held at a time. Metrics that decompose per clip are
recorded as per-clip sums; mAP50 and per-video classification are computed at the end from recorded per-frame
detections and per-clip logits. A random policy's keep sets are seeded by (seed, clip index)
(``engine.clip_seed``), so records do not depend on clip order, resumption or sharding.
"""

from __future__ import annotations

import time
import traceback
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F

from tokbench.benchmark import _frame_row, _indices, _summary, per_video
from tokbench.config import MethodConfig
from tokbench.engine import clip_seed
from tokbench.errors import DataError, TokbenchError
from tokbench.experiment import DEFAULT_MODEL, open_data, row_columns
from tokbench.flop_table import fvcore_kind_costs, fvcore_temporal_head_gmacs, unit_columns, unit_of
from tokbench.metrics import kl_to_dense, map50, map50_vs_dense, top1, top1_agreement
from tokbench.models.zoo import LoadedModel, load_model
from tokbench.records import detections_from_json, detections_to_json
from tokbench.results import config_id

Emit = Callable[[dict], None]  # receives each finished record
FIDELITY_IN_MEMORY = ("classify", "features")  # kinds whose fidelity needs the dense outputs of the clip itself


@dataclass(frozen=True)
class Job:
    """A resolved run specification: one method configuration at one frame sampling on one experiment.

    ``identity`` holds the row's naming columns (resolved options, sampling, model, weights, data, limits);
    ``error`` is set when the engine refuses the configuration (its row carries the error, nothing runs).
    """

    config: MethodConfig
    sampling: int
    identity: dict
    config_id: str
    error: str = ""

    @property
    def dense(self) -> bool:
        return self.config.policy == "dense"


@dataclass(frozen=True)
class RunSpec:
    """One configuration at one frame sampling on one experiment: model and weights, input size, data and its
    limits (``clips`` videos, at most ``frames`` sampled steps per clip), seed (data, random-init weights; the
    method's seed is ``config.seed``) and views. ``run_one`` turns it into per-clip records and a row."""

    config: MethodConfig = field(default_factory=MethodConfig)
    sampling: int = 1
    task: str = "detect"
    model: str | None = None  # None: the task's shipped model
    checkpoint: Path | None = None
    img_size: int | None = None
    data: str | None = None  # None: the embedded benchmark
    clips: int = 4
    frames: int | None = None
    seed: int = 0
    views: int | None = None


def run_one(spec: RunSpec, loaded: LoadedModel | None = None,
            progress: Callable[[int], None] | None = None) -> tuple[list[dict], dict]:
    """Resolve ``spec`` (``loaded``: its model, already loaded) and run it clip by clip in memory: ``(records,
    row)``. A configuration the engine refuses, or a failing clip, raises (one configuration: nothing to go on
    with)."""
    loaded = loaded or load_model(spec.model or DEFAULT_MODEL[spec.task], spec.checkpoint, spec.img_size,
                                  seed=spec.seed)
    dataset = open_data(spec, loaded)
    loaded.engine(spec.config)  # a refused configuration is a one-line error here
    job = resolve(loaded, spec.config, spec.sampling, row_columns(loaded, spec))
    records: list[dict] = []
    stream(loaded, dataset, [job], clip_indices(dataset, spec.clips), emit=records.append, max_frames=spec.frames,
           progress=progress, strict=True)
    row = build_row(loaded, job, {r["clip"]: r for r in records}, views=getattr(dataset, "views", 1))
    if row["error"]:
        raise TokbenchError(row["error"])
    return records, row


def resolve(loaded: LoadedModel, config: MethodConfig, sampling: int, experiment: dict) -> Job:
    """The one resolve step: the engine's resolved options (never ``auto``) + sampling + ``experiment`` columns.

    A configuration the engine refuses is resolved as far as it goes and carries the error.
    """
    error = ""
    try:
        options = loaded.engine(config).resolved.as_dict()
    except TokbenchError as err:
        options = config.resolve(loaded.task(config).dense, strict=False).as_dict()
        error = f"{type(err).__name__}: {err}"
    identity = options | {"sampling": sampling} | experiment
    return Job(config, sampling, identity, config_id(identity), error)


def clip_indices(dataset, videos: int | None) -> range:
    """Dataset indices of the first ``videos`` videos (``dataset.views`` clips each)."""
    views = getattr(dataset, "views", 1)
    return range(len(dataset) if videos is None else min(videos * views, len(dataset)))


# --------------------------------------------------------------------------------------------------- the runner


def stream(
    loaded: LoadedModel,
    dataset,
    jobs: list[Job],
    indices: Iterable[int],
    *,
    emit: Emit,
    max_frames: int | None = None,
    done: set[tuple[str, int]] | frozenset = frozenset(),
    progress: Callable[[int], None] | None = None,
    on_clip: Callable[[int], None] | None = None,
    strict: bool = False,
) -> None:
    """Run every job on each clip of ``indices`` in turn, emitting one record per (job, clip) not in ``done``.

    The clip is read once; per sampling the dense job runs first where the others' fidelity needs its outputs on
    this clip (``FIDELITY_IN_MEMORY``; rerun, unrecorded, if its record is already done). A job that fails on a
    clip emits an error record and runs on no further clip (``strict``: the exception propagates instead).
    """
    jobs = [j for j in jobs if not j.error]
    engines = {j.config_id: loaded.engine(j.config) for j in jobs}
    failed: set[str] = set()
    for c in indices:
        pending = {j.config_id for j in jobs if j.config_id not in failed and (j.config_id, c) not in done}
        if not pending:
            continue
        if on_clip:
            on_clip(c)
        try:
            clip = dataset[c]
        except (KeyboardInterrupt, SystemExit):
            raise
        except Exception as err:
            if strict:
                raise
            for job in jobs:
                if job.config_id in pending:
                    emit(_error_record(job, c, err))
                    failed.add(job.config_id)
            continue
        for sampling in dict.fromkeys(j.sampling for j in jobs if j.config_id in pending):
            dense_out = None
            group = sorted((j for j in jobs if j.sampling == sampling), key=lambda j: not j.dense)
            needs_dense = loaded.kind in FIDELITY_IN_MEMORY and any(
                not j.dense and j.config_id in pending for j in group)
            for job in group:
                if job.config_id not in pending and not (job.dense and needs_dense):
                    continue
                start = time.perf_counter()
                try:
                    torch.manual_seed(clip_seed(job.config.seed, c))
                    record, outputs = run_pair(loaded, engines[job.config_id], clip, c, sampling, max_frames,
                                               None if job.dense else dense_out, progress)
                except (KeyboardInterrupt, SystemExit):
                    raise
                except Exception as err:  # a failed configuration becomes a row, the grid goes on
                    if strict:
                        raise
                    failed.add(job.config_id)
                    if job.config_id in pending:
                        emit(_error_record(job, c, err))
                    continue
                if job.dense:
                    dense_out = outputs
                if job.config_id in pending:
                    emit({"config_id": job.config_id, "clip": c, **record,
                          "wall_s": round(time.perf_counter() - start, 4)})
        del clip, dense_out


def _error_record(job: Job, clip: int, err: Exception) -> dict:
    return {"config_id": job.config_id, "clip": clip, "error": f"{type(err).__name__}: {err}",
            "traceback": traceback.format_exc(limit=3)}


def run_pair(loaded: LoadedModel, engine, clip, index: int, sampling: int, max_frames: int | None, dense,
             progress: Callable[[int], None] | None = None):
    """One job on one clip with fresh state: ``(record, outputs)``; ``outputs`` are what fidelity compares (kept
    in memory only for the dense job of ``FIDELITY_IN_MEMORY`` kinds), ``dense`` the dense job's on this clip."""
    t = loaded.tubelet
    state = engine.new_state(index)
    frames, preds = [], []
    for i in _indices(clip.frames.shape[0], sampling, max_frames, t):
        x = loaded.steps(clip.frames[i : i + t], clip.valid_hw)
        start = time.perf_counter()
        rec = engine.step(x, state)
        frames.append(_frame_row(clip.clip_id, i, rec, (time.perf_counter() - start) * 1000))
        preds.append((i, rec.predictions))
        if progress:
            progress(1)
    record: dict = {"clip_id": clip.clip_id, "video": clip.video_id or clip.clip_id, "frames": frames}
    outputs = None
    if loaded.kind == "detect":
        record["detections"] = [detections_to_json(p[0]) for _, p in preds]
        if clip.targets is not None:
            record["targets"] = [detections_to_json(clip.targets[i]) for i, _ in preds]
    elif loaded.kind == "action":
        with torch.inference_mode():
            logits = loaded.model.temporal(torch.stack([p for _, p in preds], dim=1))
        record["logits"] = logits[0].tolist()
        record["label"] = clip.label
    elif loaded.kind == "classify":
        outputs = torch.cat([p.cpu() for _, p in preds])  # [frames, K]
        if dense is not None:
            record["agree"] = int((outputs.argmax(-1) == dense.argmax(-1)).sum())
            record["kl_sum"] = float(F.kl_div(outputs.log_softmax(-1), dense.log_softmax(-1), log_target=True,
                                              reduction="sum"))
    elif loaded.kind == "features":
        vit = engine.vit
        tokens = torch.cat([p.cpu() for _, p in preds])  # [frames, N', C]
        pooled = tokens[:, 0] if vit.has_class_token else tokens[:, vit.num_prefix :].mean(1)
        outputs = {"pooled": pooled, "tokens": tokens}
        if dense is not None:
            for name in ("pooled", "tokens"):
                sims = F.cosine_similarity(outputs[name].flatten(0, -2), dense[name].flatten(0, -2), dim=-1)
                record[f"cos_{name}_sum"], record[f"cos_{name}_n"] = float(sims.sum()), sims.numel()
    return record, outputs


# ------------------------------------------------------------------------------------------------ rows from records


def complete(job: Job, records: dict[int, dict], indices: Iterable[int]) -> bool:
    """Whether ``records`` (clip -> record) hold a finished record of every clip, or an error."""
    return any(r.get("error") for r in records.values()) or all(c in records for c in indices)


def summarise(loaded: LoadedModel, job: Job, records: dict[int, dict], views: int = 1,
              dense: dict[int, dict] | None = None) -> dict:
    """Frame counts, timings and metrics of a job from its records (clip -> record, every clip run), like
    ``benchmark.run_model``'s summary; ``dense`` the dense job's records at the same sampling (fidelity)."""
    ordered = [records[c] for c in sorted(records)]
    frames = [f for r in ordered for f in r["frames"]]
    videos = [r["video"] for r in ordered]
    if any(len(set(videos[v : v + views])) > 1 for v in range(0, len(videos), views)):
        raise DataError(f"the dataset's clips do not come in runs of {views} views of one video")
    summary = _summary(frames) | {"clips_run": len(ordered), "videos_run": len(ordered) // views}
    fidelity = dense is not None and not job.dense and all(c in dense for c in records)
    if loaded.kind == "detect":
        preds = [detections_from_json(d) for r in ordered for d in r["detections"]]
        if all("targets" in r for r in ordered):
            summary["map50"] = map50(preds, [detections_from_json(d) for r in ordered for d in r["targets"]])
        if fidelity:
            reference = [detections_from_json(d) for c in sorted(records) for d in dense[c]["detections"]]
            summary["map50_vs_dense"] = map50_vs_dense(preds, reference)
    elif loaded.kind == "action":
        logits, labels = torch.tensor([r["logits"] for r in ordered]), [r["label"] for r in ordered]
        if views > 1:
            logits, labels = per_video(logits, views), labels[::views]
        if all(label is not None for label in labels):
            summary["top1"] = top1(logits, torch.tensor(labels))
        if fidelity:
            reference = torch.tensor([dense[c]["logits"] for c in sorted(records)])
            reference = per_video(reference, views) if views > 1 else reference
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
