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

from tokbench import distributed
from tokbench.config import MethodConfig
from tokbench.engine import RESET, FrameRecord, clip_seed
from tokbench.errors import ConfigError, TokbenchError
from tokbench.experiment import DEFAULT_MODEL, open_data, row_columns
from tokbench.jobs import Job, resolve
from tokbench.models.zoo import LoadedModel, load_model
from tokbench.records import detections_to_json
from tokbench.reuse import SharedFrames
from tokbench.rows import build_row

Emit = Callable[[dict], None]  # receives each finished record
FIDELITY_IN_MEMORY = ("classify", "features")  # kinds whose fidelity needs the dense outputs of the clip itself
CLIP_BATCH = 8  # clips in lockstep per engine step (measured best on CPU for the embedded benchmark)


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
    device: str = "cpu"  # cpu or cuda (this rank's own GPU under torchrun)


def run_one(spec: RunSpec, loaded: LoadedModel | None = None,
            progress: Callable[[int], None] | None = None) -> tuple[list[dict], dict]:
    """Resolve ``spec`` (``loaded``: its model, already loaded) and run it clip by clip in memory: ``(records,
    row)``. A configuration the engine refuses, or a failing clip, raises (one configuration: nothing to go on
    with)."""
    loaded = loaded or load_model(spec.model or DEFAULT_MODEL[spec.task], spec.checkpoint, spec.img_size,
                                  seed=spec.seed)
    dataset = open_data(spec, loaded)
    [run] = evaluate(loaded, dataset, [spec.config], sampling=spec.sampling, videos=spec.clips, frames=spec.frames,
                     experiment=row_columns(loaded, spec), progress=progress, device=distributed.device(spec.device))
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
    device: torch.device | str = "cpu",
    clip_batch: int = CLIP_BATCH,
) -> list[Run]:
    """Run ``configs`` on the first ``videos`` videos of ``dataset`` (at most ``frames`` steps each) in memory,
    clip-major, and build their rows: labelled metrics where the data has labels, and, where a dense
    configuration is among ``configs``, every other row's fidelity to it. A refused configuration or a failing
    clip raises. ``experiment``: extra naming columns of the rows; ``device``: where the model runs (moved there).
    """
    loaded.model.to(device)
    jobs = []
    for config in configs:
        loaded.engine(config)  # a refused configuration is a one-line error here
        jobs.append(resolve(loaded, config, sampling, experiment or {}))
    records: dict[str, dict[int, dict]] = {j.config_id: {} for j in jobs}
    stream(loaded, dataset, jobs, clip_indices(dataset, videos), max_frames=frames, progress=progress, strict=True,
           emit=lambda r: records[r["config_id"]].__setitem__(r["clip"], r), device=device, clip_batch=clip_batch)
    dense = next((records[j.config_id] for j in jobs if j.dense), None)
    views = getattr(dataset, "views", 1)
    runs = []
    for job in jobs:
        row = build_row(loaded, job, records[job.config_id], views=views, dense=dense)
        if row["error"]:
            raise TokbenchError(row["error"])
        runs.append(Run(row, records[job.config_id]))
    return runs


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


def frame_row(clip_id: str, index: int, rec: FrameRecord, step_ms: float, sample: int = 0,
              clip_batch: int = 1, reused: bool = False) -> dict:
    """Sample ``sample``'s per-frame record of one step (JSON-ready); ``step_ms`` its share of the batched step
    (``reused``: a full frame another job ran on the same clips, its time there)."""
    return {
        "clip": clip_id,
        "frame": index,
        "t": rec.t,
        "kind": rec.kind,
        # a reset that kept a fixed pattern (classification, docs/method.md 5) rather than every patch
        "pattern_reset": rec.kind == RESET and getattr(rec, "pattern", rec.num_kept < rec.num_patches),
        "kept_tokens": rec.num_kept,
        "num_patches": rec.num_patches,
        "kept": None if rec.kept is None else rec.kept[sample].tolist(),
        "step_ms": round(step_ms, 3),
        "clip_batch": clip_batch,
        "reused": reused,
        "degenerate_heatmap": int(rec.degenerate[sample]) if rec.degenerate else 0,
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
    device: torch.device | str = "cpu",
    clip_batch: int = CLIP_BATCH,
) -> None:
    """Run every job on each clip of ``indices``, emitting one record per (job, clip) not in ``done``.

    Clips run in lockstep batches of up to ``clip_batch`` (the clips of ``indices`` with work left, in order; clips
    whose frame tensors differ in shape run in separate batches): the keep count does not depend on the data and
    every per-clip draw has its own generator, so a clip's record equals its record run alone (timings aside).
    A record's ``step_ms`` is the batched step's time divided by the batch size, given as ``clip_batch``.
    Each batch is read once; per sampling the dense job runs first where the others' fidelity needs its outputs
    on these clips (``FIDELITY_IN_MEMORY``; rerun, unrecorded, if its record is already done). A frame that runs
    every token is computed once per batch and reused by every job with the same full-frame signature, at any
    sampling (``tokbench.reuse``; records are unchanged, frames carry ``reused``). A job whose batch
    fails reruns those clips one at a time, so the error lands on the clip that raised it; a job that fails on
    a clip emits an error record and runs on no further clip (``strict``: the exception propagates instead).
    """
    if clip_batch < 1:
        raise ConfigError(f"clip_batch must be >= 1, got {clip_batch}")
    jobs = [j for j in jobs if not j.error]
    engines = {j.config_id: loaded.engine(j.config) for j in jobs}
    failed: set[str] = set()

    def pending(c: int) -> set[str]:
        return {j.config_id for j in jobs if j.config_id not in failed and (j.config_id, c) not in done}

    batch: list[int] = []
    for c in indices:
        if pending(c):
            batch.append(c)
        if len(batch) == clip_batch:
            _run_batch(loaded, dataset, jobs, engines, batch, pending, failed, emit, max_frames, progress, on_clip,
                       strict, device)
            batch = []
    if batch:
        _run_batch(loaded, dataset, jobs, engines, batch, pending, failed, emit, max_frames, progress, on_clip,
                   strict, device)


def _run_batch(loaded, dataset, jobs, engines, batch, pending, failed, emit, max_frames, progress, on_clip, strict,
               device) -> None:
    """Read the clips of ``batch`` and run every pending job on them (``stream``), grouped by frame shape."""
    clips = {}
    for c in batch:
        todo = pending(c)
        if not todo:
            continue
        if on_clip:
            on_clip(c)
        try:
            clips[c] = dataset[c]
        except (KeyboardInterrupt, SystemExit):
            raise
        except Exception as err:
            if strict:
                raise
            for job in jobs:
                if job.config_id in todo:
                    emit(_error_record(job, c, err))
                    failed.add(job.config_id)
    groups: dict[tuple, list[int]] = {}
    for c, clip in clips.items():
        groups.setdefault(tuple(clip.frames.shape), []).append(c)
    for members in groups.values():
        todo = {c: pending(c) for c in members}
        shared = SharedFrames()  # full frames reused across this batch's jobs and samplings
        plan = []
        for sampling in dict.fromkeys(j.sampling for j in jobs if any(j.config_id in t for t in todo.values())):
            # dense first (fidelity), then jobs grouped by whether they share full frames, so each is held briefly
            group = sorted((j for j in jobs if j.sampling == sampling),
                           key=lambda j: (not j.dense, engines[j.config_id].rollout))
            needs_dense = {c for c in members if loaded.kind in FIDELITY_IN_MEMORY and any(
                not j.dense and j.config_id in todo[c] for j in group)}
            for job in group:
                run = [c for c in members if job.config_id not in failed and (
                    job.config_id in todo[c] or (job.dense and c in needs_dense))]
                plan.append((sampling, job, run))
                _expect(shared, engines[job.config_id], run, clips[members[0]].frames.shape[0], sampling,
                        max_frames, loaded.tubelet)
        dense_out: dict[int, dict[int, object]] = {}
        for sampling, job, run in plan:
            run = [c for c in run if job.config_id not in failed]
            recorded = {c for c in run if job.config_id in todo[c]}
            outs = dense_out.setdefault(sampling, {})
            for c, (record, outputs) in _run_job(loaded, engines[job.config_id], job, clips, run, recorded,
                                                 sampling, max_frames, outs, progress, strict, device, failed, emit,
                                                 shared):
                if job.dense:
                    outs[c] = outputs
                if job.config_id in todo[c]:
                    emit({"config_id": job.config_id, "clip": c, **record})
    del clips


def _run_job(loaded, engine, job, clips, run, recorded, sampling, max_frames, dense_out, progress, strict, device,
             failed, emit, shared=None) -> list[tuple[int, tuple[dict, object]]]:
    """One job on the clips ``run`` in one batch: ``[(clip, (record, outputs))]``. A failing batch reruns its
    clips one at a time; the first clip that fails alone ends the job (``failed``) and gets an error record where
    its record is wanted (``recorded``)."""
    if not run:
        return []
    if job.dense:
        dense_out = {}
    try:
        torch.manual_seed(clip_seed(job.config.seed, run[0]))  # nothing draws from it; kept for determinism
        results = run_batch(loaded, engine, [clips[c] for c in run], run, sampling, max_frames,
                            [dense_out.get(c) for c in run], progress, device, shared)
        return list(zip(run, results, strict=True))
    except (KeyboardInterrupt, SystemExit):
        raise
    except Exception as err:
        if strict and len(run) == 1:
            raise
        if len(run) == 1:
            failed.add(job.config_id)
            if run[0] in recorded:
                emit(_error_record(job, run[0], err))
            return []
    out = []
    for c in run:  # the batch failed: find the clip that fails alone
        result = _run_job(loaded, engine, job, clips, [c], recorded, sampling, max_frames, dense_out, progress,
                          strict, device, failed, emit, shared)
        if not result:
            break
        out += result
    return out


def _expect(shared: SharedFrames, engine, run: list[int], num_frames: int, sampling: int, max_frames: int | None,
            tubelet: int) -> None:
    """Register ``engine``'s full frames on the clips ``run`` as future users of ``shared``."""
    if not run:
        return
    signature = engine.full_signature()
    for t, i in enumerate(step_indices(num_frames, sampling, max_frames, tubelet)):
        if engine.runs_full(t):
            shared.expect((signature, tuple(run), i), engine.prunes)


def _error_record(job: Job, clip: int, err: Exception) -> dict:
    return {"config_id": job.config_id, "clip": clip, "error": f"{type(err).__name__}: {err}",
            "traceback": traceback.format_exc(limit=3)}


def run_pair(loaded: LoadedModel, engine, clip, index: int, sampling: int, max_frames: int | None, dense,
             progress: Callable[[int], None] | None = None, device: torch.device | str = "cpu"):
    """One job on one clip with fresh state: ``(record, outputs)`` (``run_batch`` of one clip)."""
    [result] = run_batch(loaded, engine, [clip], [index], sampling, max_frames, [dense], progress, device)
    return result


def run_batch(loaded: LoadedModel, engine, clips: list, indices: list[int], sampling: int, max_frames: int | None,
              dense: list | None = None, progress: Callable[[int], None] | None = None,
              device: torch.device | str = "cpu", shared: SharedFrames | None = None) -> list[tuple[dict, object]]:
    """One job on B clips of equal frame shape in lockstep, with fresh state: ``[(record, outputs)]`` per clip.

    ``outputs`` are what fidelity compares (kept in memory only for the dense job of ``FIDELITY_IN_MEMORY``
    kinds), ``dense[b]`` the dense job's on clip b (or None). Steps run on ``device`` (the model's) as one batch
    ``[B, ...]``; a step's time includes waiting for the GPU and is split evenly over the B clips (``step_ms``);
    ``wall_s`` is the batch's wall time divided by B. With ``shared``, a full frame another job already ran on
    these clips is reused (bit-identical: same signature, same batch), its ``step_ms`` the time it took there.
    """
    t, b_size = loaded.tubelet, len(clips)
    dense = dense or [None] * b_size
    start_all = time.perf_counter()
    state = engine.new_state(indices)
    frames: list[list[dict]] = [[] for _ in clips]
    preds = []
    cuda = torch.device(device).type == "cuda"
    signature = engine.full_signature() if shared is not None else None
    for i in step_indices(clips[0].frames.shape[0], sampling, max_frames, t):
        key = (signature, tuple(indices), i) if shared is not None and engine.runs_full(state.t) else None
        reused = shared.take(key, engine.prunes) if key else None
        if reused:
            rec, step_ms = engine.restore(reused.frame, state, reused.own), reused.ms / b_size
        else:
            x = torch.cat([loaded.steps(clip.frames[i : i + t], clip.valid_hw) for clip in clips]).to(device)
            start = time.perf_counter()
            rec = engine.step(x, state)
            if cuda:
                torch.cuda.synchronize(device)
            step_ms = (time.perf_counter() - start) * 1000 / b_size
            wanted, buffers = shared.wanted(key) if key else (False, False)
            if wanted:
                shared.put(key, engine.snapshot(state, rec, buffers), step_ms * b_size, buffers)
        for b, clip in enumerate(clips):
            frames[b].append(frame_row(clip.clip_id, i, rec, step_ms, b, b_size, reused is not None))
        preds.append((i, rec.predictions))
        if progress:
            progress(b_size)
    action_logits = None
    if loaded.kind == "action":
        with torch.inference_mode():
            action_logits = loaded.model.temporal(torch.stack([p for _, p in preds], dim=1))
    results = []
    for b, clip in enumerate(clips):
        record, outputs = _clip_record(loaded, engine, clip, frames[b], [(i, _sample(p, b)) for i, p in preds],
                                       None if action_logits is None else action_logits[b], dense[b])
        results.append((record, outputs))
    wall_s = round((time.perf_counter() - start_all) / b_size, 4)
    return [(record | {"wall_s": wall_s}, outputs) for record, outputs in results]


def _sample(predictions, b: int):
    """Sample ``b`` of a step's predictions, keeping a batch of one: a list per image (detection) or ``[B, ...]``."""
    return [predictions[b]] if isinstance(predictions, list) else predictions[b : b + 1]


def _clip_record(loaded: LoadedModel, engine, clip, frames: list[dict], preds: list, logits, dense):
    """One clip's record and fidelity outputs from its per-frame rows and per-step predictions (batch of one)."""
    record: dict = {"clip_id": clip.clip_id, "video": clip.video_id or clip.clip_id, "frames": frames}
    outputs = None
    if loaded.kind == "detect":
        record["detections"] = [detections_to_json(p[0]) for _, p in preds]
        if clip.targets is not None:
            record["targets"] = [detections_to_json(clip.targets[i]) for i, _ in preds]
    elif loaded.kind == "action":
        record["logits"] = logits.tolist()
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
