"""A grid over method knobs on the embedded benchmark: the grid expansion and a thin run over ``tokbench.pipeline``;
one row per configuration x sampling, built from durable per-clip records."""

from __future__ import annotations

import itertools
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path

from tokbench import distributed
from tokbench.config import MethodConfig
from tokbench.errors import ConfigError, DataError
from tokbench.experiment import DEFAULT_MODEL, experiment_of, open_data, row_columns, training_note
from tokbench.flop_table import keep_ratio
from tokbench.jobs import resolve
from tokbench.models.zoo import load_model
from tokbench.paired import failed, paired_rows, setting
from tokbench.pipeline import CLIP_BATCH, clip_indices, step_indices, stream
from tokbench.policies import POLICIES, policy
from tokbench.records import RecordWriter, finished_pairs, job_records, records_path
from tokbench.results import append_row, check_experiment, finished_ids, prepare_out_dir, provenance, write_meta
from tokbench.rows import RESAMPLES, build_row, complete, summarise
from tokbench.schedule import parse_schedule

GRID_KNOBS = ("policy", "window", "keep_ratio", "reset_every", "head_fusion", "similarity", "fg_ratio", "bg_ratio",
              "drop_schedule", "propagation")
RGTP_ONLY_KNOBS = ("window", "head_fusion", "similarity", "drop_schedule", "propagation")  # baselines: no rollout


@dataclass
class AblationSpec:
    """What to run: lists per knob (``None`` = the method default), plus data limits."""

    task: str = "detect"
    knobs: dict[str, list] = field(default_factory=dict)
    sampling: list[int] = field(default_factory=lambda: [1, 4])
    preset: str = "default"
    model: str | None = None
    checkpoint: Path | None = None
    img_size: int | None = None
    data: str | None = None  # None: the embedded benchmark; else sample:NAME, a video folder or file
    clips: int = 32
    frames: int | None = None
    seed: int = 0  # data, method (random policy) and random-init weights
    overrides: dict[str, object] = field(default_factory=dict)  # --set KEY=VALUE, applied to every configuration
    views: int | None = None  # video classification views per video (1 or 12); None: 12 for csv: data, else 1
    pretrained: bool = False  # a timm model's hub weights (timm's loading and cache)
    device: str = "cpu"  # cpu or cuda; under torchrun, cuda is each rank's own GPU (cuda:LOCAL_RANK)
    resamples: int = RESAMPLES  # bootstrap resamples of the clips per row (0: no intervals)
    clip_batch: int = CLIP_BATCH  # clips in lockstep per engine step (records do not depend on it; step_ms does)


def expand(spec: AblationSpec, kind: str | None = None) -> list[MethodConfig]:
    """The grid: a dense row, RGTP over the product of all knob lists, baselines over the budget knobs only.

    Without ``policy`` in the knobs, every registered policy that applies to the model's output ``kind`` (default:
    the spec's task) runs; a seeded policy (``random``) runs its ``seeds`` seeds. A propagation other than
    ``none`` pairs only with schedules of two or more blocks (it scores the later drops); other pairs are skipped.
    """
    lists = {k: v for k, v in spec.knobs.items() if v}
    kind = kind or spec.task
    defaults = [name for name, p in POLICIES.items() if p.applies_to(kind)]
    policies = [policy(name) for name in dict.fromkeys(lists.pop("policy", None) or defaults)]
    base = {**spec.overrides, "seed": spec.seed}
    configs = [MethodConfig.from_preset(spec.preset, **(base | {"policy": "dense"}))]
    for p in [p for p in policies if p.prunes]:
        names = [n for n in lists if p.rollout or n not in RGTP_ONLY_KNOBS]
        seeds = range(spec.seed, spec.seed + p.seeds)
        for values in itertools.product(*(lists[n] for n in names)):
            knobs = dict(zip(names, values, strict=True))
            if _idle_propagation(base | knobs):
                continue
            configs += [MethodConfig.from_preset(spec.preset, **(base | knobs | {"policy": p.name, "seed": s}))
                        for s in seeds]
    return configs


def _idle_propagation(options: dict) -> bool:
    """A propagation with no later drop to score (a one-shot or one-block schedule)."""
    return options.get("propagation", "none") != "none" and len(parse_schedule(options.get("drop_schedule") or "")) < 2


def run_ablation(
    spec: AblationSpec,
    out: Path,
    *,
    on_row: Callable[[dict], None] | None = None,
    on_frames: Callable[[int], None] | None = None,
    on_config: Callable[[str, int], None] | None = None,
    on_start: Callable[[int | None], None] | None = None,
) -> list[dict]:
    """Run every configuration not yet in ``out/rows.csv``; returns the rows written in this call (rank 0).

    Clip-major (``pipeline.stream``): each clip is read once and every configuration x sampling runs on it before
    the next; each finished (configuration, clip) pair is appended to ``out/records.rank<r>.jsonl``, so a rerun
    resumes where a killed run stopped. ``spec.clip_batch`` clips (of this rank's pending ones) run in lockstep as one
    batch; records do not depend on it, timings do (``step_ms`` is the batched step's time per clip). Under torchrun,
    clip ``i`` runs on rank ``i % world``; rank 0 waits for
    every rank, then builds every row from the merged records (the dense rows' records score the others' fidelity
    to dense). ``out`` holds one experiment: rows of another model, weights, data or input size are refused.
    """
    if spec.task not in DEFAULT_MODEL:
        raise ConfigError(f"task must be 'detect' or 'action', got {spec.task!r}")
    if any(s < 1 for s in spec.sampling):
        raise ConfigError(f"frame strides must be >= 1, got {spec.sampling}")
    distributed.init()
    loaded = load_model(spec.model or DEFAULT_MODEL[spec.task], spec.checkpoint, spec.img_size, seed=spec.seed,
                        pretrained=spec.pretrained)
    device = distributed.device(spec.device)
    loaded.model.to(device)
    num_patches = loaded.backbone.patch_embed.num_patches
    keeps = spec.knobs.get("keep_ratio") or []
    spec = replace(spec, knobs=spec.knobs | {"keep_ratio": [keep_ratio(k, num_patches) for k in keeps] or None})
    configs = expand(spec, loaded.kind)
    dataset = open_data(spec, loaded)
    if len(dataset) == 0:
        raise DataError("the data holds no clips")
    prepare_out_dir(out)
    experiment = experiment_of(spec, loaded, dataset)
    check_experiment(out, experiment)
    rows_csv = out / "rows.csv"
    done = finished_ids(rows_csv)
    jobs = [resolve(loaded, config, sampling, row_columns(loaded, spec)) for config in configs
            for sampling in spec.sampling]
    todo = [j for j in jobs if j.config_id not in done]
    sample = loaded.steps(dataset[0].frames[: loaded.tubelet]).to(device)  # unreadable data fails here, first
    distributed.barrier()  # every rank has read rows.csv and meta.json before rank 0 writes
    # a rerun with nothing left to do keeps the provenance of the run that produced the rows
    if distributed.is_main() and (not (out / "meta.json").exists() or todo):
        videos = len(dataset) // getattr(dataset, "views", 1)
        data = dataset.spec() | {"clips_used": min(spec.clips, videos), "frames_per_clip_limit": spec.frames,
                                 "views": getattr(dataset, "views", 1)}
        write_meta(out, provenance(
            command="ablate", experiment=experiment, task=loaded.kind, model=loaded.name,
            model_info=loaded.describe(), model_card=loaded.card, training=training_note(loaded), data=data,
            sampling=spec.sampling, seeds={"data": spec.seed, "weights": spec.seed,
                                           "method": sorted({c.seed for c in configs})},
            configurations=[c.as_dict() for c in configs], world_size=distributed.world_size(),
            convention="fvcore (1 multiply-add = 1 MAC; attention counted)",
        ))
    if not todo:
        return []
    indices = clip_indices(dataset, spec.clips)
    # the dense rows' records score the others' fidelity: run dense wherever its records are missing
    needed = todo + [j for j in jobs if j.dense and j not in todo and any(t.sampling == j.sampling for t in todo)]
    mine = distributed.shard(indices)

    def on_clip(c: int) -> None:
        if on_config:
            on_config(f"clip {c + 1}/{len(indices)}", len(indices))

    done = finished_pairs(out)
    if on_start:
        on_start(planned_steps(dataset, needed, mine, done, spec.frames, loaded.tubelet))
    stream(loaded, dataset, needed, mine, emit=RecordWriter(records_path(out, distributed.rank())),
           max_frames=spec.frames, done=done, progress=on_frames, on_clip=on_clip, device=device,
           clip_batch=spec.clip_batch)
    distributed.barrier()  # every rank's records are on disk
    if not distributed.is_main():
        return []
    views = getattr(dataset, "views", 1)
    dense = {j.sampling: job_records(out, j.config_id, indices) for j in needed if j.dense}
    written = []
    samples: dict[str, dict] = {}  # config_id -> metric -> bootstrap values [R], for the paired comparisons
    for job in todo:  # one configuration's records in memory at a time (besides the dense ones)
        records = dense[job.sampling] if job.dense else job_records(out, job.config_id, indices)
        if not job.error and not complete(job, records, indices):
            continue  # not every clip ran (a rank stopped early): the rerun resumes it
        row = build_row(loaded, job, records, views=views, dense=dense.get(job.sampling), sample=sample,
                        resamples=spec.resamples, samples=samples.setdefault(job.config_id, {}))
        append_row(rows_csv, row)
        written.append(row)
        if on_row:
            on_row(row)
    if spec.resamples:
        write_paired(out, loaded, jobs, indices, views, samples, spec.resamples)
    return written


def planned_steps(dataset, jobs: list, clips: list[int], done: set, frames: int | None, tubelet: int) -> int | None:
    """Engine steps this rank has left (dense reruns for in-memory fidelity aside); None where clip lengths are
    unknown before decoding (video files)."""
    num_frames = getattr(dataset, "num_frames", None)
    if not isinstance(num_frames, int):
        return None
    return sum(len(step_indices(num_frames, j.sampling, frames, tubelet)) for c in clips for j in jobs
               if not j.error and (j.config_id, c) not in done)


def write_paired(out: Path, loaded, jobs: list, indices, views: int, samples: dict, resamples: int) -> None:
    """``out/paired.csv``: every pruned row against dense and RGTP against each baseline (``paired.paired_rows``),
    over the rows in ``out/rows.csv``; bootstrap values of rows finished by an earlier call are recomputed from
    their records (the same seeded resamples)."""
    import pandas as pd

    rows = pd.read_csv(out / "rows.csv").to_dict("records")
    finished = {r["config_id"] for r in rows if not failed(r)}
    dense = {}
    for job in jobs:
        if job.config_id in finished and not samples.get(job.config_id):
            if job.sampling not in dense:
                dense[job.sampling] = next((job_records(out, j.config_id, indices) for j in jobs
                                            if j.dense and j.sampling == job.sampling), None)
            records = dense[job.sampling] if job.dense else job_records(out, job.config_id, indices)
            summarise(loaded, job, records, views, dense[job.sampling], resamples,
                      samples=samples.setdefault(job.config_id, {}))
    lines = paired_rows([r for r in rows if r["config_id"] in finished], samples)
    pd.DataFrame(lines).to_csv(out / "paired.csv", index=False)


def row_summary(row: dict) -> str:
    """One line per finished row: its setting and sampling, quality with its interval, GMACs."""
    name = setting(row)
    if policy(row["policy"]).seeds > 1:
        name += f" seed={row['seed']}"
    head = f"done: {name}, 1/{row['sampling']}"
    if row.get("error"):
        return f"{head}: failed ({row['error']})"
    parts = []
    for metric in ("map50", "top1", "map50_vs_dense", "top1_agreement", "cosine_pooled"):
        if isinstance(row.get(metric), float):
            ci = (row.get(f"{metric}_ci_low"), row.get(f"{metric}_ci_high"))
            parts.append(f"{metric} {row[metric]:.4g}" + (f" [{ci[0]:.4g}, {ci[1]:.4g}]" if None not in ci else ""))
            break
    unit = row.get("unit", "frame")
    if row.get(f"gmacs_per_{unit}") is not None:
        parts.append(f"{row[f'gmacs_per_{unit}']:.4g} GMACs/{unit}")
    return f"{head}: " + ", ".join(parts + [f"{row.get('wall_s', 0):.0f} s"])
