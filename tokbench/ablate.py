"""A grid over method knobs on the embedded benchmark: one row per configuration x sampling, written as it ends."""

from __future__ import annotations

import itertools
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path

import torch

from tokbench.benchmark import run_model
from tokbench.config import MethodConfig
from tokbench.data import SyntheticAction, SyntheticDetection
from tokbench.errors import ConfigError, DataError, TokbenchError
from tokbench.flop_table import fvcore_kind_costs, fvcore_temporal_head_gmacs, keep_ratio, unit_columns, unit_of
from tokbench.models.zoo import LoadedModel, load_model
from tokbench.policies import BASELINES
from tokbench.results import (
    append_row,
    check_experiment,
    config_id,
    finished_ids,
    prepare_out_dir,
    provenance,
    write_meta,
)

GRID_KNOBS = ("policy", "window", "keep_ratio", "reset_every", "head_fusion", "similarity", "fg_ratio", "bg_ratio")
RGTP_ONLY_KNOBS = ("window", "head_fusion", "similarity")  # baselines neither track nor roll out
RANDOM_SEEDS = 3
DEFAULT_MODEL = {"detect": "synthvid-det", "action": "synthaction-vivit"}
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


class MemoisedClips:
    """A dataset whose clips are built (generated or decoded) once per run and then shared by every
    configuration; float32 in memory, about 38 MB per 32-frame clip at 320 px."""

    def __init__(self, dataset) -> None:
        self.dataset = dataset
        self._clips: dict[int, object] = {}

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int):
        if index not in self._clips:
            self._clips[index] = self.dataset[index]
        return self._clips[index]

    def __getattr__(self, name: str):
        return getattr(self.dataset, name)


def open_data(spec: AblationSpec, loaded: LoadedModel):
    """The embedded benchmark for the model's task (at its input size), or the user's data (``spec.data``).

    ``vid:ROOT`` is ImageNet VID's val split (each snippet one whole clip, docs/method.md 9.1 input rule),
    ``csv:LABELS.csv`` a Kinetics / EPIC label CSV over the videos in its folder (ViViT sampling: the model's frame
    count, 2 frames apart; ``views`` 12 = 3 spatial x 4 temporal views by default, or 1 centred view); anything else
    is unlabelled video (``sample:NAME``, a folder or one file).
    """
    size = loaded.img_size[0]
    csv_data = spec.data is not None and spec.data.startswith("csv:")
    if spec.views not in (None, 1) and not csv_data:
        raise ConfigError(f"--views {spec.views} applies to labelled video classification (csv: data) only")
    if spec.data in (None, "synthetic"):
        if loaded.kind == "action":
            return SyntheticAction("val", num_clips=spec.clips, seed=spec.seed)
        return SyntheticDetection("val", num_clips=spec.clips, size=size, seed=spec.seed)
    frames = loaded.model.spec.num_frames if loaded.kind == "action" else 32
    if spec.data.startswith("vid:"):
        from tokbench.data.imagenet_vid import ImageNetVID

        return _check_classes(ImageNetVID(Path(spec.data[4:]).expanduser(), "val", size=size, max_clips=spec.clips),
                              loaded)
    if csv_data:
        from tokbench.data.kinetics import LabelledVideos

        labels = Path(spec.data[4:]).expanduser()
        return _check_classes(LabelledVideos(labels.parent, labels, size=size, num_frames=frames, stride=2,
                                             max_clips=spec.clips, views=spec.views or 12), loaded)
    from tokbench.data.video import open_video_data

    return open_video_data(spec.data, size=size, num_frames=frames, max_clips=spec.clips)


def _check_classes(dataset, loaded: LoadedModel):
    """Labelled data must name as many classes as the model predicts (labels index the model's outputs)."""
    if loaded.kind in ("action", "detect"):
        classes = loaded.model.spec.num_classes
    elif loaded.kind == "classify":
        classes = loaded.backbone.num_classes
    else:
        return dataset
    if classes != len(dataset.class_names):
        raise DataError(f"{loaded.name} predicts {classes} classes but the data names {len(dataset.class_names)}; "
                        "labels must index the model's outputs")
    return dataset


def _dense_reference(out: Path, sampling: int) -> Path:
    return out / f"dense_outputs_1in{sampling}.pt"


def run_ablation(
    spec: AblationSpec,
    out: Path,
    *,
    on_row: Callable[[dict], None] | None = None,
    on_frames: Callable[[int], None] | None = None,
    on_config: Callable[[str, int], None] | None = None,
) -> list[dict]:
    """Run every configuration not yet in ``out/rows.csv``; returns the rows written in this call.

    The dense configuration runs first; its outputs (kept in ``out/dense_outputs_1in<s>.pt``) score every
    pruned row's fidelity to dense, next to the labelled metric where the data has labels. ``out`` holds one
    experiment: rows of another model, weights, data or input size are refused (``check_experiment``).
    """
    if spec.task not in DEFAULT_MODEL:
        raise ConfigError(f"task must be 'detect' or 'action', got {spec.task!r}")
    if any(s < 1 for s in spec.sampling):
        raise ConfigError(f"frame strides must be >= 1, got {spec.sampling}")
    loaded = load_model(spec.model or DEFAULT_MODEL[spec.task], spec.checkpoint, spec.img_size, seed=spec.seed)
    num_patches = loaded.backbone.patch_embed.num_patches
    keeps = spec.knobs.get("keep_ratio") or []
    spec = replace(spec, knobs=spec.knobs | {"keep_ratio": [keep_ratio(k, num_patches) for k in keeps] or None})
    configs = expand(spec, loaded.kind)
    dataset = MemoisedClips(open_data(spec, loaded))
    if len(dataset) == 0:
        raise DataError("the data holds no clips")
    prepare_out_dir(out)
    experiment = experiment_of(spec, loaded, dataset)
    check_experiment(out, experiment)
    rows_csv = out / "rows.csv"
    done = finished_ids(rows_csv)
    sample = loaded.steps(dataset[0].frames[: loaded.tubelet])
    costs_by_config: dict[MethodConfig, dict] = {}
    references: dict[int, object] = {}
    written = []

    def run(config: MethodConfig, sampling: int, reference=None):
        torch.manual_seed(config.seed)
        return run_model(loaded, dataset, config, sampling=sampling, max_clips=spec.clips, max_frames=spec.frames,
                         progress=on_frames, reference=reference)

    todo = []
    for config in configs:
        for sampling in spec.sampling:
            identity = row_identity(config, loaded, spec, sampling)
            todo.append((config, sampling, identity, config_id(identity)))
    pending = {s for c, s, _, cid in todo if c.policy != "dense" and cid not in done}
    # a rerun with nothing left to do keeps the provenance of the run that produced the rows
    if not (out / "meta.json").exists() or any(cid not in done for *_, cid in todo):
        videos = len(dataset) // getattr(dataset, "views", 1)
        data = dataset.spec() | {"clips_used": min(spec.clips, videos), "frames_per_clip_limit": spec.frames,
                                 "views": getattr(dataset, "views", 1)}
        write_meta(out, provenance(
            command="ablate", experiment=experiment, task=loaded.kind, model=loaded.name,
            model_info=loaded.describe(), model_card=loaded.card, training=training_note(loaded), data=data,
            sampling=spec.sampling, seeds={"data": spec.seed, "weights": spec.seed,
                                           "method": sorted({c.seed for c in configs})},
            configurations=[c.as_dict() for c in configs],
            convention="fvcore (1 multiply-add = 1 MAC; attention counted)",
        ))
    for config, sampling, identity, cid in todo:
        dense = config.policy == "dense"
        if cid in done:
            if dense and sampling in pending:  # the pruned rows still to run need the dense outputs
                if on_config:
                    on_config(f"dense outputs 1/{sampling}", spec.clips)
                cached = _load_reference(out, sampling)
                references[sampling] = cached if cached is not None else run(config, sampling).outputs
            continue
        if on_config:
            on_config(f"{label(config)} 1/{sampling}", spec.clips)
        key = config.replace(seed=0)
        row = {"config_id": cid, **identity, "convention": "fvcore", "error": ""}
        start = time.perf_counter()
        try:
            if key not in costs_by_config:
                costs_by_config[key] = fvcore_kind_costs(loaded, loaded.engine(config).resolved, sample)[0]
            result = run(config, sampling, None if dense else references.get(sampling))
            row |= result.summary | _cost_columns(loaded, config, costs_by_config[key], result.summary)
            if dense:
                references[sampling] = result.outputs
                torch.save(result.outputs, _dense_reference(out, sampling))
        except (KeyboardInterrupt, SystemExit):
            raise
        except Exception as err:  # a failed configuration becomes a row, the grid goes on
            row |= {"error": f"{type(err).__name__}: {err}", "traceback": traceback.format_exc(limit=3)}
        row["wall_s"] = round(time.perf_counter() - start, 2)
        append_row(rows_csv, row)
        written.append(row)
        if on_row:
            on_row(row)
    return written


def experiment_of(spec: AblationSpec, loaded: LoadedModel, dataset) -> dict:
    """What makes rows comparable in one table: model, weights, input size, data and its generator version."""
    data = dataset.spec()
    return {"command": "ablate", "model": loaded.name, "weights": loaded.weights, "img_size": list(loaded.img_size),
            "task": loaded.kind,
            "data": spec.data or "synthetic", "data_name": data.get("name"),
            "data_version": data.get("spec_version"), "data_seed": spec.seed, "clips": spec.clips,
            "views": getattr(dataset, "views", 1),
            "frames_per_clip_limit": spec.frames}


def row_identity(config: MethodConfig, loaded: LoadedModel, spec: AblationSpec, sampling: int) -> dict:
    """The columns that name a row: the resolved method options (never ``auto``), sampling and the experiment.

    A configuration the engine refuses is resolved as far as it goes (its row carries the error).
    """
    try:
        options = loaded.engine(config).resolved.as_dict()
    except TokbenchError:
        options = config.resolve(loaded.task(config).dense, strict=False).as_dict()
    return options | {"sampling": sampling, "task": loaded.kind, "model": loaded.name, "weights": loaded.weights,
                      "checkpoint": loaded.checkpoint, "data": spec.data or "synthetic", "clips": spec.clips,
                      "frames_per_clip_limit": spec.frames}


def training_note(loaded: LoadedModel) -> str:
    """Whether the pruned results are training-free (docs/method.md 11): the paper's classification numbers use a
    temporal encoder and classifier fine-tuned on pruned outputs; tokbench's own runs use none."""
    if loaded.checkpoint:
        return ("user-supplied weights: pruning itself is training-free, but these weights may include a temporal "
                "encoder / classifier fine-tuned on pruned outputs (as the paper's classification numbers do)")
    if loaded.card:
        return "training-free: tokbench's shipped weights, trained on full frames only"
    return "training-free: randomly initialised weights (fidelity to dense only)"


def _load_reference(out: Path, sampling: int):
    path = _dense_reference(out, sampling)
    try:
        return torch.load(path, weights_only=True) if path.exists() else None
    except Exception:  # an unreadable cache is recomputed
        return None


def label(config: MethodConfig) -> str:
    """Short name of a configuration for progress lines."""
    if config.policy == "rgtp":
        return f"rgtp r={config.window}"
    return f"{config.policy} seed={config.seed}" if config.policy == "random" else config.policy


def _cost_columns(loaded: LoadedModel, config: MethodConfig, per_kind: dict, summary: dict) -> dict:
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
        head = _head_gmacs(loaded, config.sdpa_flops)
        columns = unit_columns(per_kind, counts, unit=unit, views=views, head_gmacs=head)
    else:
        columns = unit_columns(per_kind, counts, unit=unit)
    kept = per_kind["pruned"] if "pruned" in per_kind else per_kind["full"]
    return {"unit": unit, **columns, "keep_tokens": kept.kept_tokens}


_HEADS: dict[tuple[int, str], float] = {}


def _head_gmacs(loaded: LoadedModel, sdpa: str) -> float:
    """fvcore GMACs of one view's temporal encoder + classifier (0 where each step carries its own head)."""
    key = (id(loaded.model), sdpa)
    if key not in _HEADS:
        _HEADS[key] = fvcore_temporal_head_gmacs(loaded, sdpa)
    return _HEADS[key]
