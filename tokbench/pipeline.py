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

from tokbench.config import MethodConfig
from tokbench.engine import RESET, FrameRecord, clip_seed
from tokbench.errors import ConfigError, TokbenchError
from tokbench.experiment import DEFAULT_MODEL, open_data, row_columns
from tokbench.models.zoo import LoadedModel, load_model
from tokbench.records import detections_to_json
from tokbench.results import config_id
from tokbench.rows import build_row, complete

__all__ = ["Job", "Run", "RunSpec", "build_row", "clip_indices", "complete", "evaluate", "resolve", "run_one",
           "stream"]

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
    [run] = evaluate(loaded, dataset, [spec.config], sampling=spec.sampling, videos=spec.clips, frames=spec.frames,
                     experiment=row_columns(loaded, spec), progress=progress)
    return [run.records[c] for c in sorted(run.records)], run.row


@dataclass
class Run:
    """One configuration's row and its per-clip records (dataset clip index -> record)."""

    row: dict
    records: dict[int, dict]

    @property
    def frames(self) -> list[dict]:
        """Per-frame records of every clip, in clip order."""
        return [f for c in sorted(self.records) for f in self.records[c]["frames"]]


def evaluate(
    loaded: LoadedModel,
    dataset,
    configs: list[MethodConfig],
    *,
    sampling: int = 1,
    videos: int | None = None,
    frames: int | None = None,
    experiment: dict | None = None,
    progress: Callable[[int], None] | None = None,
) -> list[Run]:
    """Run ``configs`` on the first ``videos`` videos of ``dataset`` (at most ``frames`` steps each) in memory,
    clip-major, and build their rows: labelled metrics where the data has labels, and, where a dense
    configuration is among ``configs``, every other row's fidelity to it. A refused configuration or a failing
    clip raises. ``experiment``: extra naming columns of the rows."""
    jobs = []
    for config in configs:
        loaded.engine(config)  # a refused configuration is a one-line error here
        jobs.append(resolve(loaded, config, sampling, experiment or {}))
    records: dict[str, dict[int, dict]] = {j.config_id: {} for j in jobs}
    stream(loaded, dataset, jobs, clip_indices(dataset, videos), max_frames=frames, progress=progress, strict=True,
           emit=lambda r: records[r["config_id"]].__setitem__(r["clip"], r))
    dense = next((records[j.config_id] for j in jobs if j.dense), None)
    views = getattr(dataset, "views", 1)
    runs = []
    for job in jobs:
        row = build_row(loaded, job, records[job.config_id], views=views, dense=dense)
        if row["error"]:
            raise TokbenchError(row["error"])
        runs.append(Run(row, records[job.config_id]))
    return runs


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


def step_indices(num_frames: int, sampling: int, max_frames: int | None, tubelet: int = 1) -> list[int]:
    """First frame of every step of a clip: every ``sampling``-th step of ``tubelet`` consecutive frames, at most
    ``max_frames`` steps (docs/method.md 5: the engine's t counts the kept steps)."""
    if sampling < 1:
        raise ConfigError(f"frame stride must be >= 1, got {sampling}")
    idx = list(range(0, num_frames - tubelet + 1, sampling * tubelet))
    return idx if max_frames is None else idx[:max_frames]


def frame_row(clip_id: str, index: int, rec: FrameRecord, step_ms: float) -> dict:
    """One step's per-frame record (JSON-ready)."""
    return {
        "clip": clip_id,
        "frame": index,
        "t": rec.t,
        "kind": rec.kind,
        # a reset that kept a fixed pattern (classification, docs/method.md 5) rather than every patch
        "pattern_reset": rec.kind == RESET and getattr(rec, "pattern", rec.num_kept < rec.num_patches),
        "kept_tokens": rec.num_kept,
        "num_patches": rec.num_patches,
        "kept": None if rec.kept is None else rec.kept[0].tolist(),
        "step_ms": round(step_ms, 3),
        "degenerate_heatmap": rec.degenerate_heatmaps,
    }


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
    for i in step_indices(clip.frames.shape[0], sampling, max_frames, t):
        x = loaded.steps(clip.frames[i : i + t], clip.valid_hw)
        start = time.perf_counter()
        rec = engine.step(x, state)
        frames.append(frame_row(clip.clip_id, i, rec, (time.perf_counter() - start) * 1000))
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


