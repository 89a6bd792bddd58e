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
from tokbench.models.zoo import load_model
from tokbench.pipeline import build_row, clip_indices, complete, resolve, stream
from tokbench.policies import BASELINES
from tokbench.records import RecordWriter, finished_pairs, job_records, records_path
from tokbench.results import append_row, check_experiment, finished_ids, prepare_out_dir, provenance, write_meta

GRID_KNOBS = ("policy", "window", "keep_ratio", "reset_every", "head_fusion", "similarity", "fg_ratio", "bg_ratio")
RGTP_ONLY_KNOBS = ("window", "head_fusion", "similarity")  # baselines neither track nor roll out
RANDOM_SEEDS = 3
DEFAULT_POLICIES = {
    "detect": ("rgtp", *BASELINES),
    "action": ("rgtp", *(p for p in BASELINES if p != "boxmask")),
}


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


def expand(spec: AblationSpec, kind: str | None = None) -> list[MethodConfig]:
    """The grid: a dense row, RGTP over the product of all knob lists, baselines over the budget knobs only.

    Without ``policy`` in the knobs, every baseline that applies to the model's output ``kind`` (default: the
    spec's task) runs next to RGTP; ``random`` runs ``RANDOM_SEEDS`` seeds.
    """
    lists = {k: v for k, v in spec.knobs.items() if v}
    kind = kind or spec.task
    defaults = DEFAULT_POLICIES["detect" if kind == "detect" else "action"]
    policies = list(dict.fromkeys(lists.pop("policy", None) or defaults))
    base = {**spec.overrides, "seed": spec.seed}
    configs = [MethodConfig.from_preset(spec.preset, **(base | {"policy": "dense"}))]
    for policy in [p for p in policies if p != "dense"]:
        names = [n for n in lists if policy == "rgtp" or n not in RGTP_ONLY_KNOBS]
        seeds = range(spec.seed, spec.seed + (RANDOM_SEEDS if policy == "random" else 1))
        for values in itertools.product(*(lists[n] for n in names)):
            knobs = dict(zip(names, values, strict=True))
            configs += [MethodConfig.from_preset(spec.preset, **(base | knobs | {"policy": policy, "seed": s}))
                        for s in seeds]
    return configs


def run_ablation(
    spec: AblationSpec,
    out: Path,
    *,
    on_row: Callable[[dict], None] | None = None,
    on_frames: Callable[[int], None] | None = None,
    on_config: Callable[[str, int], None] | None = None,
) -> list[dict]:
    """Run every configuration not yet in ``out/rows.csv``; returns the rows written in this call (rank 0).

    Clip-major (``pipeline.stream``): each clip is read once and every configuration x sampling runs on it before
    the next; each finished (configuration, clip) pair is appended to ``out/records.rank<r>.jsonl``, so a rerun
    resumes where a killed run stopped. Under torchrun, clip ``i`` runs on rank ``i % world``; rank 0 waits for
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
    sample = loaded.steps(dataset[0].frames[: loaded.tubelet])  # unreadable data fails here, before anything runs
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

    stream(loaded, dataset, needed, mine, emit=RecordWriter(records_path(out, distributed.rank())),
           max_frames=spec.frames, done=finished_pairs(out), progress=on_frames, on_clip=on_clip)
    distributed.barrier()  # every rank's records are on disk
    if not distributed.is_main():
        return []
    views = getattr(dataset, "views", 1)
    dense = {j.sampling: job_records(out, j.config_id, indices) for j in needed if j.dense}
    written = []
    for job in todo:  # one configuration's records in memory at a time (besides the dense ones)
        records = dense[job.sampling] if job.dense else job_records(out, job.config_id, indices)
        if not job.error and not complete(job, records, indices):
            continue  # not every clip ran (a rank stopped early): the rerun resumes it
        row = build_row(loaded, job, records, views=views, dense=dense.get(job.sampling), sample=sample)
        append_row(rows_csv, row)
        written.append(row)
        if on_row:
            on_row(row)
    return written


def label(config: MethodConfig) -> str:
    """Short name of a configuration for progress lines."""
    if config.policy == "rgtp":
        return f"rgtp r={config.window}"
    return f"{config.policy} seed={config.seed}" if config.policy == "random" else config.policy
