"""Wall-clock benchmark: do the FLOP savings turn into speed?

Streaming latency is measured at batch 1 the way a video runs: frame t waits for frame t-1, state carries over,
every step is timed on its own (``torch.cuda.synchronize`` around it on a GPU). Engines are interleaved frame by
frame (each with its own state: frame t of every configuration runs before frame t + 1 of any), so drift on a
shared machine hits every row alike, even within a clip. Reported per row (the timed
frame kind is the pruned one where a policy prunes, else the full frame):

- ``step_ms_median`` / ``step_ms_iqr``: median and IQR of the timed steps;
- ``speedup_vs_dense`` and ``gmacs_ratio_vs_dense``: the step's speed-up over tokbench's dense frame next to the
  GMACs ratio of the same frames, and ``speedup_over_gmacs_ratio``, how much of the FLOP saving turns into speed;
- ``method_ms`` / ``method_pct``: what a policy's own work costs in wall-clock, the row's pruned step median minus
  that of ``grid`` at the same budget (a fixed keep set: the same pruned model, fused attention, no scoring), or of
  ``random`` where grid was not timed; for RGTP it includes the premium of explicit attention probabilities over
  fused SDPA, which no timer inside the engine sees (``comparison_columns``);
- ``speedup_vs_random``: the same-budget ``random`` row's pruned step median over this row's;
- ``timed_parts_ms`` / ``timed_parts_pct``: the engine's own split of its parts (scoring, tracking, selection,
  rollout, a drop schedule's score propagation), timed inside the step, with the propagation on its own
  (``propagation_ms``); it leaves out what those parts change in the blocks around them (see ``method_ms``);
- ``block_efficiency``: one block's MACs per ms at the pruned length over that at the dense length
  (``block_times``).

Throughput runs ``batch`` clips in lockstep.

Configurations are resolved and named by ``jobs.resolve``, as every command's rows are: a configuration the engine
refuses becomes a row with ``error`` and the others are timed. The timed clip is a synthetic pan (``moving_clip``)
or the first clip of the user's data. With a ``log`` file, every timed clip's step times are appended to it
durably (``records.RecordWriter``: one JSON line, fsynced) as soon as the clip ends, and a rerun with the same
settings skips the clips already there: an interrupted benchmark resumes.
"""

from __future__ import annotations

import json
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch

from tokbench.adapters import adapter_for
from tokbench.config import MethodConfig
from tokbench.engine import FULL, PRUNED, StreamingEngine
from tokbench.errors import TokbenchError
from tokbench.frame_flops import frame_costs
from tokbench.jobs import Job, resolve
from tokbench.models.zoo import LoadedModel
from tokbench.records import RecordWriter
from tokbench.results import config_id


@dataclass
class Entry:
    """One timed variant: a name, a policy, and a function running one frame given the clip's state."""

    name: str
    policy: str
    job: Job | None  # None: timm's own forward
    engine: StreamingEngine | None
    step: Callable[[torch.Tensor, object], str]  # (frame [B, 3, H, W], state) -> frame kind
    new_state: Callable[[int], object]  # clip index -> fresh state (seeds a random policy per clip)
    keep: float | None = None  # the keep ratio of a policy's row (its budget); None: dense and timm


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _quartiles(values: list[float]) -> tuple[float, float]:
    if len(values) < 2:
        return (values[0], values[0]) if values else (0.0, 0.0)
    q = statistics.quantiles(values, n=4)
    return q[0], q[2]


def moving_clip(loaded: LoadedModel, frames: int, batch: int = 1, seed: int = 0) -> torch.Tensor:
    """``frames`` normalised engine steps ``[T, B, 3 t, H, W]`` (``t`` video frames each) with real motion: a
    textured image panning 2 px per video frame."""
    h, w = loaded.img_size
    n = frames * loaded.tubelet
    gen = torch.Generator().manual_seed(seed)
    base = torch.rand(batch, 3, h // 8, (w + 2 * n) // 8 + 1, generator=gen)
    canvas = torch.nn.functional.interpolate(base, scale_factor=8, mode="bilinear")
    clip = torch.stack([canvas[..., 2 * t : 2 * t + w][..., :h, :] for t in range(n)])
    return loaded.steps(clip)


def _timm_entry(loaded: LoadedModel, fused: bool, base: MethodConfig) -> Entry:
    """timm's own ``forward_features`` (fused SDPA or its explicit attention path), frame by frame, followed by
    the same task head as tokbench's rows, so both sides time the same work."""
    model = loaded.backbone
    attns = [blk.attn for blk in model.blocks]
    vit, task = adapter_for(model), loaded.task(base)

    def step(frame: torch.Tensor, state) -> str:
        saved = [a.fused_attn for a in attns]
        for a in attns:
            a.fused_attn = fused
        try:
            with torch.inference_mode():
                task.head(vit, model.forward_features(frame))
        finally:
            for a, f in zip(attns, saved, strict=True):
                a.fused_attn = f
        return FULL

    name = "timm forward_features" + ("" if fused else " (explicit attention)")
    return Entry(name, "dense", None, None, step, lambda clip: None)


def _dense(base: MethodConfig) -> MethodConfig:
    """tokbench's dense frame under ``base``'s other options: no policy, and no drop schedule (rgtp's alone)."""
    return base.replace(policy="dense", drop_schedule="", propagation="none")


def _engine_entry(
    loaded: LoadedModel, config: MethodConfig, name: str, experiment: dict, keep: float | None = None
) -> Entry:
    """An engine configuration, resolved like every command's rows; a refused one keeps its error, no engine."""
    job = resolve(loaded, config, 1, experiment)
    if job.error:
        return Entry(name, config.policy, job, None, lambda f, s: "", lambda clip: None, keep)
    engine = loaded.engine(config)
    return Entry(name, config.policy, job, engine, lambda f, s: engine.step(f, s).kind, engine.new_state, keep)


def run_bench(
    loaded: LoadedModel,
    keeps: list[float],
    policies: list[str],
    *,
    base: MethodConfig,
    frames: int = 16,
    repeats: int = 5,
    warmup: int = 1,
    batch: int = 8,
    device: str = "cpu",
    on_progress: Callable[[str], None] | None = None,
    log: Path | None = None,
    log_key: str = "",
    clip: torch.Tensor | None = None,
    compile: bool = False,
) -> list[dict]:
    """Rows: timm (fused / explicit), tokbench dense, then each policy at each keep ratio.

    ``clip``: the timed engine steps ``[T, 1, C, H, W]`` (default: ``moving_clip`` of ``frames`` steps).
    ``compile``: the method's own functions of every engine through ``torch.compile`` (``StreamingEngine.compile``);
    their compilation falls in the warm-up clip, whose time each row reports (``warmup_clip_s``).
    ``log``: JSON-lines file of timed clips (see module docstring); lines of another ``log_key`` are ignored.
    """
    dev = torch.device(device)
    loaded.model.to(dev)
    experiment = {"model": loaded.name, "weights": loaded.weights, "img_size": list(loaded.img_size)}
    entries = [_timm_entry(loaded, True, base), _timm_entry(loaded, False, base),
               _engine_entry(loaded, _dense(base), "tokbench dense", experiment)]
    for keep in keeps:
        for policy in policies:
            config = base.replace(policy=policy, keep_ratio=keep)
            entries.append(_engine_entry(loaded, config, f"{policy} keep={keep:g}", experiment, keep))
    failed = [e for e in entries if e.job is not None and e.job.error]
    if entries[2] in failed:
        raise TokbenchError(f"tokbench dense: {entries[2].job.error}")
    entries = [e for e in entries if e not in failed]
    if compile:
        if warmup < 1:
            raise TokbenchError("--compile needs a warm-up clip (--warmup 1 or more): compilation happens there")
        for entry in entries:
            if entry.engine is not None:
                entry.engine.compile()
    clip = (moving_clip(loaded, frames) if clip is None else clip).to(dev)
    frames = clip.shape[0]
    write = RecordWriter(log) if log is not None else None
    warm: dict[str, float] = {}  # name -> seconds of the first warm-up clip (compilation included)
    steps: dict[str, dict[str, list[float]]] = {e.name: {} for e in entries}  # name -> kind -> step ms
    parts: dict[str, dict[str, list[float]]] = {e.name: {} for e in entries}  # all engine.timings ms per step
    solves: dict[str, dict[str, list[float]]] = {e.name: {} for e in entries}  # the propagation's share of it
    done = _logged_clips(log, log_key, steps, parts, solves, repeats)
    for r in range(warmup + repeats):
        todo = [e for e in entries if r < warmup or (r - warmup, e.name) not in done]
        if not todo:
            continue
        if on_progress:
            on_progress(f"repeat {r + 1}/{warmup + repeats}: {len(todo)} configurations, frame by frame")
        timed = _time_repeat(todo, clip, dev, r)
        if r < warmup:
            if r == 0:
                warm = {name: sum(sum(v) for v in t[0].values()) / 1000 for name, t in timed.items()}
            continue
        for entry in todo:
            clip_steps, clip_parts, clip_solves = timed[entry.name]
            for kind in clip_steps:
                steps[entry.name].setdefault(kind, []).extend(clip_steps[kind])
                parts[entry.name].setdefault(kind, []).extend(clip_parts[kind])
                solves[entry.name].setdefault(kind, []).extend(clip_solves[kind])
            if write is not None:
                write({"key": log_key, "repeat": r - warmup, "entry": entry.name, "steps_ms": clip_steps,
                       "timed_parts_ms": clip_parts, "propagation_ms": clip_solves})
    throughput = {e.name: _throughput(e, moving_clip(loaded, min(frames, 8), batch).to(dev), dev) for e in entries}
    rows = _rows(loaded, entries, steps, parts, solves, throughput, repeats, frames, clip[0, :1], batch, base)
    for row, entry in zip(rows, entries, strict=True):
        row["compiled"] = compile and entry.engine is not None
        row["warmup_clip_s"] = round(warm[entry.name], 3) if entry.name in warm else None
    return rows + [_failed_row(loaded, e) for e in failed]


def _failed_row(loaded: LoadedModel, entry: Entry) -> dict:
    """A refused configuration's row: its name, its resolved options and the error, nothing timed."""
    return {"config_id": entry.job.config_id, "name": entry.name, "policy": entry.policy, **entry.job.identity,
            "error": entry.job.error}


def _time_repeat(
    entries: list[Entry], clip: torch.Tensor, dev: torch.device, index: int
) -> dict[str, tuple[dict[str, list[float]], dict[str, list[float]], dict[str, list[float]]]]:
    """Run one clip ``[T, 1, 3, H, W]`` through every entry with fresh state, frame by frame: frame t of every
    entry runs before frame t + 1 of any, so drift on a shared machine lands on every entry alike (``index``: the
    repeat, seeding a random policy as clip ``index``). Per entry and frame kind: the step times, the engine's
    timed parts (the sum of ``engine.timings``) and the propagation's part of them (ms)."""
    out = {e.name: ({}, {}, {}) for e in entries}
    states = {e.name: e.new_state(index) for e in entries}
    for frame in clip:
        for entry in entries:
            steps, parts, solves = out[entry.name]
            if entry.engine is not None:
                entry.engine.timings = {}
            _sync(dev)
            start = time.perf_counter()
            kind = entry.step(frame, states[entry.name])
            _sync(dev)
            steps.setdefault(kind, []).append((time.perf_counter() - start) * 1000)
            timings = entry.engine.timings if entry.engine is not None else {}
            parts.setdefault(kind, []).append(sum(timings.values()) * 1000)
            solves.setdefault(kind, []).append(timings.get("propagation", 0.0) * 1000)
    for entry in entries:
        if entry.engine is not None:
            entry.engine.timings = None
    return out


def _logged_clips(
    log: Path | None, key: str, steps: dict, parts: dict, solves: dict, repeats: int
) -> set[tuple[int, str]]:
    """Load the timed clips of ``log`` with this ``key`` into ``steps`` / ``parts`` / ``solves`` (lines written
    before the propagation was timed count it as 0; lines of older versions name the timed parts ``method_ms``);
    their (repeat, name)."""
    done: set[tuple[int, str]] = set()
    if log is None or not log.exists():
        return done
    for text in log.read_text().splitlines():
        try:
            line = json.loads(text)
        except json.JSONDecodeError:  # a line cut short by the interruption
            continue
        pair = (line.get("repeat"), line.get("entry"))
        if line.get("key") != key or pair[1] not in steps or pair[0] >= repeats or pair in done:
            continue
        done.add(pair)
        logged_parts = line["timed_parts_ms"] if "timed_parts_ms" in line else line["method_ms"]
        for kind, values in line["steps_ms"].items():
            steps[pair[1]].setdefault(kind, []).extend(values)
            parts[pair[1]].setdefault(kind, []).extend(logged_parts[kind])
            solves[pair[1]].setdefault(kind, []).extend(line.get("propagation_ms", {}).get(kind, [0.0] * len(values)))
    return done


def _throughput(entry: Entry, clip: torch.Tensor, dev: torch.device, timed: int = 3) -> float:
    """Frames per second with ``B`` clips in lockstep (``clip [T, B, 3, H, W]``): the median of ``timed`` clips
    after one warm-up clip."""
    fps = []
    for r in range(timed + 1):
        state = entry.new_state(r)
        _sync(dev)
        start = time.perf_counter()
        for frame in clip:
            entry.step(frame, state)
        _sync(dev)
        if r:
            fps.append(clip.shape[0] * clip.shape[1] / (time.perf_counter() - start))
    return statistics.median(fps)


def block_times(
    block: torch.nn.Module, dim: int, lengths: list[int], device: torch.device, repeats: int = 20
) -> dict[int, float]:
    """Median ms of one transformer block (timm's own, fused attention) on ``[1, S, C]`` for each length S.

    Lengths are interleaved round-robin. ``block_efficiency`` in the rows is one block's multiply-adds per ms at
    the pruned length over that at the dense length (the dense time per multiply-add over the pruned one):
    efficiency 1.0 means a block's time follows its MACs; below 1, short sequences lose that share of the FLOP
    ratio (0.6: a 4 x FLOP cut runs 2.4 x faster) to fixed per-op costs and small GEMMs, before any pruning
    overhead. None where a block cannot run on a bare token sequence (windowed blocks).
    """
    inputs = {s: torch.randn(1, s, dim, device=device) for s in lengths}
    times: dict[int, list[float]] = {s: [] for s in lengths}
    with torch.inference_mode():
        for r in range(repeats + 3):
            for s, x in inputs.items():
                _sync(device)
                start = time.perf_counter()
                block(x)
                _sync(device)
                if r >= 3:
                    times[s].append((time.perf_counter() - start) * 1000)
    return {s: statistics.median(v) for s, v in times.items()}


def block_macs(block: torch.nn.Module, length: int) -> int:
    """Multiply-adds of one block on ``length`` tokens: every linear layer, plus ``2 S^2 C`` for attention."""
    linear = sum(m.in_features * m.out_features for m in block.modules() if isinstance(m, torch.nn.Linear))
    return length * linear + 2 * length * length * block.norm1.normalized_shape[0]


REFERENCES = ("grid", "random")  # what method_ms is measured against, in order of preference


def comparison_columns(rows: list[dict]) -> list[dict]:
    """Per row, the wall-clock columns that compare policies at one budget, from per-row medians.

    ``rows``: one dict per timed row, ``policy``, ``keep`` (the budget; None for dense and timm rows) and
    ``pruned_ms``, the median pruned-frame step in ms (None where the row timed no pruned frame). Returned, in the
    same order:

    - ``method_ms``: ``pruned_ms`` minus that of the ``grid`` row at the same ``keep`` (``random`` where no grid
      row has it): what the policy's own work adds to the same pruned model's frame, in wall-clock; None for a
      row without pruned frames or without a reference at its budget (a reference row's own value is 0);
    - ``method_pct``: ``100 * method_ms / pruned_ms``;
    - ``speedup_vs_random``: the same-budget ``random`` row's ``pruned_ms`` over this row's (None without one).

    E.g. rgtp 20 ms, grid 16 ms, random 17 ms at one keep: rgtp's method_ms 4, method_pct 20, speedup_vs_random
    0.85.
    """
    ms = {(r["policy"], r["keep"]): r["pruned_ms"] for r in rows if r["keep"] is not None and r["pruned_ms"]}
    out = []
    for row in rows:
        median = row["pruned_ms"] if row["keep"] is not None else None
        reference = next((ms[(p, row["keep"])] for p in REFERENCES if (p, row["keep"]) in ms), None)
        random_ms = ms.get(("random", row["keep"]))
        method_ms = median - reference if median and reference is not None else None
        out.append({
            "method_ms": round(method_ms, 3) if method_ms is not None else None,
            "method_pct": round(100 * method_ms / median, 2) if method_ms is not None else None,
            "speedup_vs_random": round(random_ms / median, 3) if median and random_ms is not None else None,
        })
    return out


def _rows(loaded, entries, steps, parts, solves, throughput, repeats, frames, sample, batch, base) -> list[dict]:
    costs = {e.name: frame_costs(e.engine, sample) for e in entries if e.engine is not None}
    dense_ms = statistics.median(steps["tokbench dense"][FULL])
    dense_gmacs = costs["tokbench dense"][FULL].gmacs
    timm_ms = statistics.median(steps["timm forward_features"][FULL])
    vit = adapter_for(loaded.backbone)
    prefix, patches = vit.num_prefix, loaded.backbone.patch_embed.num_patches
    lengths = {prefix + patches} | {prefix + c[PRUNED].kept_tokens for c in costs.values() if PRUNED in c}
    block = loaded.backbone.blocks[len(loaded.backbone.blocks) // 2]
    efficiency = {}
    if not vit.needs_all_keys:  # a windowed block cannot run on a bare token sequence
        block_ms = block_times(block, vit.embed_dim, sorted(lengths), sample.device)
        dense_ms_per_mac = block_ms[prefix + patches] / block_macs(block, prefix + patches)
        efficiency = {s: round(dense_ms_per_mac * block_macs(block, s) / block_ms[s], 3) for s in lengths}
    kinds = {e.name: PRUNED if PRUNED in steps[e.name] else FULL for e in entries}
    medians = {e.name: statistics.median(steps[e.name][kinds[e.name]]) for e in entries}
    compared = comparison_columns([{"policy": e.policy, "keep": e.keep,
                                    "pruned_ms": medians[e.name] if kinds[e.name] == PRUNED else None}
                                   for e in entries])
    rows = []
    for entry, comparison in zip(entries, compared, strict=True):
        kind = kinds[entry.name]
        times = steps[entry.name][kind]
        median = medians[entry.name]
        q1, q3 = _quartiles(times)
        cost = costs.get(entry.name, {}).get(kind)
        parts_ms = statistics.median(parts[entry.name][kind])
        propagation_ms = statistics.median(solves[entry.name][kind])
        keep = cost.kept_tokens if cost else patches
        row = {
            "name": entry.name,
            "policy": entry.policy,
            "keep_tokens": keep,
            "frame_kind": kind,
            "step_ms_median": round(median, 3),
            "step_ms_iqr": round(q3 - q1, 3),
            "steps_timed": len(times),
            "speedup_vs_dense": round(dense_ms / median, 3),
            "gmacs_timed_frame": round(cost.gmacs, 5) if cost else round(dense_gmacs, 5),
            "gmacs_ratio_vs_dense": round(dense_gmacs / cost.gmacs, 3) if cost else 1.0,
            "speedup_over_gmacs_ratio": round((dense_ms / median) / (dense_gmacs / cost.gmacs), 3) if cost else None,
            **comparison,  # method_ms, method_pct, speedup_vs_random: against grid / random at the same keep
            "vs_timm": round(timm_ms / median, 3),
            "block_efficiency": efficiency.get(prefix + keep),
            "timed_parts_ms": round(parts_ms, 3),  # the engine's own timers: scoring, tracking, selection, rollout
            "timed_parts_pct": round(100 * parts_ms / median, 2),
            "propagation_ms": round(propagation_ms, 3),  # part of timed_parts_ms: a drop schedule's solves
            f"throughput_fps_batch{batch}": round(throughput[entry.name], 1),
            "repeats": repeats,
            "frames_per_clip": frames,
            "convention": "fvcore",
            "sdpa_flops": (entry.engine.resolved if entry.engine else base).sdpa_flops,
        }
        if entry.job is not None:
            cid, identity = entry.job.config_id, entry.job.identity
        else:
            identity = {"model": loaded.name, "weights": loaded.weights, "img_size": list(loaded.img_size)}
            cid = config_id({"timm": entry.name, **identity})
        rows.append({"config_id": cid, **row, **{k: v for k, v in identity.items() if k not in row}, "error": ""})
    return rows
