"""A grid over method knobs on the embedded benchmark: one row per configuration x sampling, written as it ends."""

from __future__ import annotations

import itertools
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch

from tokbench.benchmark import run_action, run_detection
from tokbench.config import MethodConfig
from tokbench.data import SyntheticAction, SyntheticDetection
from tokbench.engine import FULL, PRUNED, RESET, StreamingEngine
from tokbench.errors import ConfigError
from tokbench.frame_flops import frame_costs
from tokbench.models import load_shipped, model_card
from tokbench.models.action import SpatialStepTask
from tokbench.models.detector import DetectionTask
from tokbench.models.preprocess import normalize
from tokbench.policies import BASELINES
from tokbench.results import append_row, config_id, finished_ids, prepare_out_dir, provenance, write_meta

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
    clips: int = 32
    frames: int | None = None
    seed: int = 0


def expand(spec: AblationSpec) -> list[MethodConfig]:
    """The grid: a dense row, RGTP over the product of all knob lists, baselines over the budget knobs only.

    Without ``policy`` in the knobs, every baseline that applies to the task runs next to RGTP; ``random`` runs
    ``RANDOM_SEEDS`` seeds.
    """
    lists = {k: v for k, v in spec.knobs.items() if v}
    policies = list(dict.fromkeys(lists.pop("policy", None) or DEFAULT_POLICIES[spec.task]))
    configs = [MethodConfig.from_preset(spec.preset, policy="dense", seed=spec.seed)]
    for policy in [p for p in policies if p != "dense"]:
        names = [n for n in lists if policy == "rgtp" or n not in RGTP_ONLY_KNOBS]
        seeds = range(spec.seed, spec.seed + (RANDOM_SEEDS if policy == "random" else 1))
        for values in itertools.product(*(lists[n] for n in names)):
            knobs = dict(zip(names, values, strict=True))
            configs += [MethodConfig.from_preset(spec.preset, policy=policy, seed=s, **knobs) for s in seeds]
    return configs


def _engine(model, task: str, config: MethodConfig) -> StreamingEngine:
    if task == "detect":
        det_task = DetectionTask(model, config.anchor_score_thr, config.anchor_clip_end, config.anchor_fallback)
        return StreamingEngine(model.backbone, config, det_task)
    return StreamingEngine(model.spatial, config, SpatialStepTask())


def _dataset(task: str, clips: int, seed: int):
    if task == "detect":
        return SyntheticDetection("val", num_clips=clips, seed=seed)
    return SyntheticAction("val", num_clips=clips, seed=seed)


def run_ablation(
    spec: AblationSpec,
    out: Path,
    *,
    on_row: Callable[[dict], None] | None = None,
    on_frames: Callable[[int], None] | None = None,
    on_config: Callable[[str, int], None] | None = None,
) -> list[dict]:
    """Run every configuration not yet in ``out/rows.csv``; returns the rows written in this call."""
    if spec.task not in DEFAULT_MODEL:
        raise ConfigError(f"task must be 'detect' or 'action', got {spec.task!r}")
    if any(s < 1 for s in spec.sampling):
        raise ConfigError(f"frame strides must be >= 1, got {spec.sampling}")
    configs = expand(spec)
    prepare_out_dir(out)
    model_name = spec.model or DEFAULT_MODEL[spec.task]
    model = load_shipped(model_name)
    dataset = _dataset(spec.task, spec.clips, spec.seed)
    write_meta(out, provenance(
        command="ablate", task=spec.task, model=model_name, model_card=model_card(model_name),
        data=dataset.spec() | {"clips_used": spec.clips, "frames_per_clip_limit": spec.frames},
        sampling=spec.sampling, seeds={"data": spec.seed, "method": spec.seed},
        configurations=[c.as_dict() for c in configs], convention="fvcore (1 multiply-add = 1 MAC; attention counted)",
    ))
    rows_csv = out / "rows.csv"
    done = finished_ids(rows_csv)
    sample = dataset[0].frames[:1]
    sample = normalize(sample)
    runner = run_detection if spec.task == "detect" else run_action
    written = []
    for config in configs:
        costs = frame_costs(_engine(model, spec.task, config), sample)
        for sampling in spec.sampling:
            resolved = config.as_dict() | {"sampling": sampling, "task": spec.task, "model": model_name,
                                           "clips": spec.clips, "frames": spec.frames}
            cid = config_id(resolved)
            if cid in done:
                continue
            if on_config:
                on_config(f"{label(config)} 1/{sampling}", spec.clips)
            row = {"config_id": cid, **resolved, "convention": "fvcore"}
            start = time.perf_counter()
            try:
                torch.manual_seed(config.seed)
                result = runner(model, dataset, config, sampling=sampling, max_clips=spec.clips,
                                max_frames=spec.frames, progress=on_frames)
                row |= _cost_columns(costs, result.summary) | result.summary | {"error": ""}
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


def label(config: MethodConfig) -> str:
    """Short name of a configuration for progress lines."""
    if config.policy == "rgtp":
        return f"rgtp r={config.window}"
    return f"{config.policy} seed={config.seed}" if config.policy == "random" else config.policy


def _cost_columns(costs: dict, summary: dict) -> dict:
    """Per-kind GMACs and the schedule average over all frames (first and reset frames included)."""
    full = costs[FULL].gmacs
    per_kind = {FULL: full, RESET: costs.get(RESET, costs[FULL]).gmacs, PRUNED: costs.get(PRUNED, costs[FULL]).gmacs}
    counts = {FULL: summary["frames_full"], RESET: summary["frames_reset"], PRUNED: summary["frames_pruned"]}
    total = sum(per_kind[k] * counts[k] for k in per_kind)
    return {
        "gmacs_per_frame": round(total / max(1, summary["frames"]), 5),
        "gmacs_full": round(full, 5),
        "gmacs_pruned": round(per_kind[PRUNED], 5) if PRUNED in costs else None,
        "gmacs_reset": round(per_kind[RESET], 5) if RESET in costs else None,
        "overhead_gmacs_tracking": round(costs[PRUNED].overhead_gmacs_tracking, 6) if PRUNED in costs else 0.0,
        "keep_tokens": costs[PRUNED].kept_tokens if PRUNED in costs else costs[FULL].kept_tokens,
    }
