"""``tokbench flops`` rows: per configuration, the GMACs of each frame kind, the per-unit cost and the overheads.

Unit (docs/method.md section 8), decided by the model's task (``LoadedModel.kind``), never by its name:

- dense tasks (``detect``, ``features``): ``gmacs_per_frame``, the mean over all frames of a clip, first and
  reset frames included (K/V reuse, full resets);
- classification (``action``, ``classify``): ``gmacs_per_clip`` = views x (sum over the spatial steps of one
  view + temporal encoder + classifier) (shrinking sequence, pattern resets, nearest-kept matching). A timm
  classifier has no temporal encoder; its classifier runs on every step and is part of each step's cost.

Two conventions. ``fvcore``: one multiply-add = one MAC, attention counted (SDPA handle or explicit matmuls,
``sdpa_flops``); each frame kind is traced once per configuration on the real engine step (``frame_flops``), so
a row costs a few traces however long the run it describes. The method's overhead is split out:

- rollout: RGTP's traced frame minus matching minus a ``grid`` frame of the same kind (same kept tokens); under a
  drop schedule (rgtp only) minus the same frame traced without its heatmap;
- tracking: ``N (2r+1)^2 C`` analytically (elementwise work fvcore does not see);
- matching (nearest-kept fill of a shrinking sequence): the engine's ``N n C_h`` product, traced;
- propagation (a drop schedule's later drops scored by ``propagation``, docs/method.md 7.2): the float64 solves,
  ``n^3/3 + n^2`` per solving block analytically (fvcore has no handle for ``linalg_solve_ex``);
- selection: a sort of N scores, no multiply-adds (0 in this convention).

``paper``: the reference convention of docs/method.md 8, analytic (``tokbench.flops_ref``), on the paper's own
architectures (``vitdet_b``, ``vivit_b_k400``, ``vivit_b_epic``) or on shapes read from a loaded model. It
counts the propagation solves as 0 (as the reference does), so ``overhead_gmacs_propagation`` is 0.0 there.

With a drop schedule (docs/method.md 7.1) ``kept_tokens_mean`` is the first cut's count and
``kept_tokens_last_mean`` the count through the last block (the same without a schedule).

Overheads in a row are in the row's unit (per frame, schedule-averaged; or per clip), so ``gmacs_per_<unit>``
minus the four overheads is the backbone's (and heads') share.
"""

from __future__ import annotations

import itertools
from collections import Counter
from collections.abc import Mapping
from contextlib import contextmanager
from dataclasses import dataclass

import torch

from tokbench.config import MethodConfig
from tokbench.engine import FULL, PRUNED, RESET, frame_kind
from tokbench.errors import ConfigError
from tokbench.flops import count_gmacs
from tokbench.flops_ref import (
    GIGA,
    ViTArch,
    fills_nearest_kept,
    linear_macs,
    ref_frame_gmacs,
    temporal_head_gmacs,
    vitdet_b_arch,
)
from tokbench.frame_flops import KindCost, frame_costs
from tokbench.models.zoo import LoadedModel
from tokbench.policies import policy
from tokbench.results import config_id
from tokbench.selection import kept_count, reset_pattern_indices

CONVENTION = "fvcore: 1 multiply-add = 1 MAC; attention counted; tracking analytic"
PAPER_CONVENTION = "paper: MACs + bias/residual adds, patch embedding and norms not counted (docs/method.md 8)"
PAPER_MODELS = ("vitdet_b", "vivit_b_k400", "vivit_b_epic")
PAPER_VIDEO_VIEWS = {"vivit_b_k400": 12, "vivit_b_epic": 12}  # 3 spatial x 4 temporal views (docs/method.md 9.2)
DENSE_KINDS = ("detect", "features")
CLASSIFICATION_KINDS = ("action", "classify")
ROW_KINDS = ("full", "reset", "pattern", "pruned")  # reset: a full reset frame; pattern: a pattern reset frame
OVERHEADS = ("rollout", "tracking", "match", "propagation")  # the overhead_gmacs_<part> columns


def keep_ratio(keep: float, num_patches: int) -> float:
    """A keep budget as a ratio: values in (0, 1] are ratios, whole numbers above 1 are token counts."""
    if keep <= 0 or (keep > 1 and keep != int(keep)):
        raise ConfigError(f"keep must be a ratio in (0, 1] or a whole token count, got {keep}")
    if keep > num_patches:
        raise ConfigError(f"keep {int(keep)} is more than the {num_patches} patch tokens of a frame")
    return keep if keep <= 1 else keep / num_patches


# -- units, schedules, configurations --------------------------------------------------------------------------


def is_dense_kind(kind: str) -> bool:
    """``detect`` / ``features`` are dense tasks; ``action`` / ``classify`` are classification."""
    known = DENSE_KINDS + CLASSIFICATION_KINDS
    if kind not in known:
        raise ConfigError(f"unknown model kind {kind!r}; expected one of {', '.join(known)}")
    return kind in DENSE_KINDS


def unit_of(model: LoadedModel | PaperModel | str) -> str:
    """``'frame'`` for dense tasks (detect, features), ``'clip'`` for classification (action, classify)."""
    kind = model if isinstance(model, str) else model.kind
    return "frame" if is_dense_kind(kind) else "clip"


def default_views(name: str) -> int:
    """Views per clip: the paper's 12 for ViViT-B (docs/method.md 9.2), 1 for every other model."""
    return PAPER_VIDEO_VIEWS.get(name, 1)


def step_counts(steps: int, reset_every: int, reset_mode: str = "full", prunes: bool = True) -> dict[str, int]:
    """Steps of each row kind in one clip (or view) of ``steps`` steps: ``full`` (t = 0), ``reset`` (full resets),
    ``pattern`` (pattern resets) and ``pruned``; everything is ``full`` when nothing is pruned (dense policy)."""
    if not prunes:
        return {"full": steps, "reset": 0, "pattern": 0, "pruned": 0}
    kinds = Counter(frame_kind(t, reset_every) for t in range(steps))
    pattern = reset_mode == "pattern"
    return {"full": kinds[FULL], "reset": 0 if pattern else kinds[RESET], "pattern": kinds[RESET] if pattern else 0,
            "pruned": kinds[PRUNED]}


def row_kind(engine_kind: str, reset_mode: str) -> str:
    """The engine's frame kind (full | reset | pruned) as a row kind (full | reset | pattern | pruned)."""
    return "pattern" if engine_kind == RESET and reset_mode == "pattern" else engine_kind


def dense_config(base: MethodConfig) -> MethodConfig:
    """The dense baseline of ``base``: every token through every block (no keep budget, no drop schedule)."""
    return base.replace(policy="dense", keep_ratio=1.0, drop_schedule="", propagation="none")


def config_grid(
    base: MethodConfig, num_patches: int, keeps: list[float], windows: list[int] | None = None,
    resets: list[int] | None = None,
) -> list[MethodConfig]:
    """One configuration per (keep, window, reset) combination, nested in that order; keeps may be token counts."""
    windows, resets = windows or [base.window], resets or [base.reset_every]
    return [base.replace(keep_ratio=keep_ratio(k, num_patches), window=w, reset_every=r)
            for k, w, r in itertools.product(keeps, windows, resets)]


# -- per-unit columns (shared by both conventions, and by ablate / report) -------------------------------------


@dataclass(frozen=True)
class KindGmacs:
    """One frame kind in GMACs, either convention: the total and the RGTP overhead inside it."""

    gmacs: float
    kept_tokens: float  # patches after the (first) cut
    rollout: float = 0.0
    tracking: float = 0.0
    match: float = 0.0
    propagation: float = 0.0
    kept_last: float | None = None  # patches through the last block (None: ``kept_tokens``)

    @property
    def kept_tokens_last(self) -> float:
        return self.kept_tokens if self.kept_last is None else self.kept_last


def unit_columns(
    per_kind: Mapping[str, KindGmacs],
    counts: Mapping[str, float],
    *,
    unit: str,
    views: int = 1,
    head_gmacs: float = 0.0,
) -> dict[str, float | None]:
    """Row columns in the row's unit from per-kind costs and per-kind step counts of one clip (or view).

    unit 'frame': ``gmacs_per_frame`` = sum_k count_k cost_k / sum_k count_k (weights may be fractions).
    unit 'clip': ``gmacs_per_clip`` = views x (sum_k count_k cost_k + head_gmacs), head = temporal encoder +
    classifier of one view. Overheads are in the same unit; ``frac_full_frames`` counts t = 0 and full resets,
    ``frac_pattern_frames`` pattern resets; ``kept_tokens_mean`` is the mean over steps of the (first) cut's
    patches and ``kept_tokens_last_mean`` of the patches through the last block (prefix not counted).
    """
    used = {k: c for k, c in counts.items() if c}
    missing = sorted(set(used) - set(per_kind))
    if missing or not used or min(used.values()) < 0:
        raise ConfigError(f"bad per-kind counts {dict(counts)} for kinds {sorted(per_kind)}")
    total = sum(used.values())

    def weighted(attr: str) -> float:
        return sum(c * getattr(per_kind[k], attr) for k, c in used.items())

    scale = 1 / total if unit == "frame" else views
    if unit not in ("frame", "clip"):
        raise ConfigError(f"unit must be 'frame' or 'clip', got {unit!r}")
    main = weighted("gmacs") * scale + (views * head_gmacs if unit == "clip" else 0.0)
    columns: dict[str, float | None] = {f"gmacs_per_{unit}": _r(main)}
    for kind in ROW_KINDS:
        columns[f"gmacs_{kind}"] = _r(per_kind[kind].gmacs) if kind in per_kind else None
    columns["gmacs_temporal_head"] = _r(head_gmacs) if unit == "clip" and head_gmacs else None
    for part in OVERHEADS:
        columns[f"overhead_gmacs_{part}"] = round(weighted(part) * scale, 9)
    columns["frac_full_frames"] = round((used.get("full", 0) + used.get("reset", 0)) / total, 5)
    columns["frac_pattern_frames"] = round(used.get("pattern", 0) / total, 5)
    columns["kept_tokens_mean"] = round(weighted("kept_tokens") / total, 3)
    columns["kept_tokens_last_mean"] = round(weighted("kept_tokens_last") / total, 3)
    return columns


def clip_unit_gmacs(
    loaded: LoadedModel,
    per_kind_costs: Mapping[str, KindCost | KindGmacs | float],
    step_counts: Mapping[str, float],
    views: int = 1,
    *,
    sdpa: str = "handle",
) -> float:
    """fvcore GMACs per clip of a classification model: views x (sum_k count_k cost_k + temporal encoder + classifier).

    per_kind_costs: frame kind -> ``KindCost`` / ``KindGmacs`` / GMACs of one step (``frame_costs`` output works
    as is); step_counts: steps of each kind in one view (floats allowed, e.g. an average over clips). The temporal
    encoder and classifier are traced once per call (``temporal_head_gmacs``); a timm classifier has none (its
    classifier is already in every step's trace).
    """
    if unit_of(loaded) != "clip":
        raise ConfigError(f"{loaded.name} is a {loaded.kind} model: its unit is a frame, not a clip")
    steps = sum(c * getattr(per_kind_costs[k], "gmacs", per_kind_costs[k]) for k, c in step_counts.items() if c)
    return views * (steps + fvcore_temporal_head_gmacs(loaded, sdpa))


def _r(x: float) -> float:
    return round(x, 5)


# -- row assembly ------------------------------------------------------------------------------------------------

_LEAD = ("model", "kind", "convention", "sdpa_flops", "unit", "policy", "keep_ratio", "keep_tokens", "window",
         "reset_every", "reset_mode", "frames_per_clip", "views")


def _row(identity: dict, config: MethodConfig, numbers: dict, error: str = "") -> dict:
    """One flat row: identity and the leading knobs, the numbers, every resolved option, config_id, error."""
    described = {**identity, **config.as_dict()}
    return _ordered({**numbers, **described}, config_id(described), error)


def _ordered(columns: dict, cid: str, error: str) -> dict:
    """The leading columns (``_LEAD``) first, then the others, then ``config_id`` and ``error``."""
    lead = {k: columns[k] for k in _LEAD if k in columns}
    return {**lead, **{k: v for k, v in columns.items() if k not in lead}, "config_id": cid, "error": error}


_NUMBERS = ("gmacs_per_frame", "gmacs_per_clip", "gmacs_full", "gmacs_reset", "gmacs_pattern", "gmacs_pruned",
            "gmacs_temporal_head", "gmacs_ratio_vs_dense", "overhead_gmacs_rollout", "overhead_gmacs_tracking",
            "overhead_gmacs_match", "overhead_gmacs_propagation", "frac_full_frames", "frac_pattern_frames",
            "kept_tokens_mean", "kept_tokens_last_mean")
_SCHEDULE_ONLY = {"overhead_gmacs_propagation", "kept_tokens_last_mean"}  # shown where a row has a drop schedule
_BOOKKEEPING = {"model", "kind", "convention", "unit", "img_size", "config_id", "error", "unsupported_ops",
                "by_operator", "seed", "weights"}


def table_columns(rows: list[dict]) -> list[str]:
    """Columns worth a terminal table: policy and budget, every option that differs between the rows, the
    numbers, and ``error`` if a row failed (CSV and JSON keep every column)."""
    keys = list(dict.fromkeys(k for r in rows for k in r))
    pruned = [r for r in rows if r.get("policy") != "dense"] or rows
    varying = [k for k in keys if k not in _BOOKKEEPING and k not in _NUMBERS
               and len({repr(r.get(k)) for r in pruned}) > 1]
    lead = [k for k in ("policy", "keep_ratio", "keep_tokens") if k in keys]
    scheduled = any(r.get("drop_schedule") for r in rows)
    numbers = [k for k in _NUMBERS if k in keys and (scheduled or k not in _SCHEDULE_ONLY)]
    shown = lead + [k for k in varying if k not in lead] + numbers
    return shown + (["error"] if any(r.get("error") for r in rows) else [])


def _failed(identity: dict, config: MethodConfig, err: Exception) -> dict:
    return _row(identity, config, {}, f"{type(err).__name__}: {err}")


def _ratio(dense_unit: float | None, numbers: dict, unit: str) -> dict:
    value = numbers.get(f"gmacs_per_{unit}")
    return {"gmacs_ratio_vs_dense": round(dense_unit / value, 4) if dense_unit and value else None}


# -- fvcore convention -------------------------------------------------------------------------------------------


@contextmanager
def _explicit_attention(module: torch.nn.Module, explicit: bool):
    """timm attention modules run their unfused path (explicit matmuls) inside the block, if ``explicit``."""
    attns = [m for m in module.modules() if hasattr(m, "fused_attn")] if explicit else []
    before = [m.fused_attn for m in attns]
    for m in attns:
        m.fused_attn = False
    try:
        yield
    finally:
        for m, fused in zip(attns, before, strict=True):
            m.fused_attn = fused


def action_steps(loaded: LoadedModel) -> int:
    """Spatial steps per view of an action model (its temporal encoder's input length)."""
    return int(loaded.model.spec.num_steps)


def fvcore_temporal_head_gmacs(loaded: LoadedModel, sdpa: str = "handle") -> float:
    """fvcore GMACs of one view's temporal encoder + classifier, traced on ``[1, T, C]`` step outputs (action
    models; 0 for every other kind: a timm classifier's head is traced with each step)."""
    temporal = getattr(loaded.model, "temporal", None) if loaded.kind == "action" else None
    if temporal is None:
        return 0.0
    steps = torch.zeros(1, action_steps(loaded), loaded.backbone.embed_dim)
    with _explicit_attention(temporal, sdpa == "explicit"):
        return count_gmacs(temporal, steps, sdpa=sdpa).gmacs


def _input_frame(loaded: LoadedModel) -> torch.Tensor:
    h, w = loaded.img_size
    chans = loaded.backbone.patch_embed.proj.in_channels  # 3 x tubelet for ViViT steps
    return torch.randn(1, chans, h, w, generator=torch.Generator().manual_seed(0))


def fvcore_kind_costs(
    loaded: LoadedModel, config: MethodConfig, frame: torch.Tensor
) -> tuple[dict[str, KindGmacs], dict[str, KindCost]]:
    """Traced cost of each frame kind of ``config`` (resolved) as row kinds, and the raw ``KindCost`` per kind."""
    costs = frame_costs(loaded.engine(config), frame)
    rgtp = policy(config.policy).rollout
    bare = _bare_costs(loaded, config, frame) if rgtp else costs
    out = {}
    for kind, cost in costs.items():
        rollout = cost.traced_gmacs - cost.overhead_gmacs_match - bare[kind].traced_gmacs
        out[row_kind(kind, config.reset_mode)] = KindGmacs(
            cost.gmacs, cost.kept_tokens, rollout if rgtp else 0.0, cost.overhead_gmacs_tracking,
            cost.overhead_gmacs_match, cost.overhead_gmacs_propagation, cost.kept_tokens_last,
        )
    return out, costs


_COSTS: dict[tuple, dict[str, KindGmacs]] = {}
_RAW: dict[tuple, dict[str, KindCost]] = {}
_HEADS: dict[tuple[int, str], float] = {}


def _cost_key(loaded: LoadedModel, config: MethodConfig) -> tuple:
    return id(loaded.model), loaded.engine(config).resolved.replace(seed=0)


def kind_costs(loaded: LoadedModel, config: MethodConfig, sample: torch.Tensor) -> dict[str, KindGmacs]:
    """fvcore costs per row kind of ``config`` (resolved; seed aside) traced on ``sample`` (one step of the input,
    ``[1, C, H, W]``), memoised per model and configuration (the shapes of a model's input do not change)."""
    key = _cost_key(loaded, config)
    if key not in _COSTS:
        _COSTS[key], _RAW[key] = fvcore_kind_costs(loaded, loaded.engine(config).resolved, sample)
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


_BARE: dict[tuple, dict[str, KindCost]] = {}


def _bare_costs(loaded: LoadedModel, config: MethodConfig, frame: torch.Tensor) -> dict[str, KindCost]:
    """Traced costs of ``config`` without the method's rollout: the same keep sets drawn by ``grid``, which
    neither tracks nor rolls out (one trace serves every window and seed); under a drop schedule, which only rgtp
    runs, the same engine with the heatmap left out of the trace (``frame_costs(heatmap=False)``)."""
    if config.schedule:
        key = (id(loaded.model), config.replace(seed=0), tuple(frame.shape))
        if key not in _BARE:
            _BARE[key] = frame_costs(loaded.engine(config), frame, heatmap=False)
        return _BARE[key]
    bare = config.replace(policy="grid", window=0, seed=0)
    key = (id(loaded.model), bare, tuple(frame.shape))
    if key not in _BARE:
        _BARE[key] = frame_costs(loaded.engine(bare), frame)
    return _BARE[key]


def flop_rows(
    loaded: LoadedModel,
    keeps: list[float],
    *,
    base: MethodConfig,
    windows: list[int] | None = None,
    resets: list[int] | None = None,
    frames: int | None = None,
    views: int | None = None,
    by_operator: bool = False,
) -> list[dict]:
    """fvcore rows: a dense row, then one row per (keep, window, reset) combination (``base`` supplies the rest).

    Each configuration is resolved and named as every command names its rows (``jobs.resolve``); its frame kinds
    are traced once (``kind_costs``, shared with the ablation's rows) and weighted by the clip's schedule.
    frames: steps per clip (default 32; an action model always uses its own step count); views: per clip
    (default ``default_views``). A configuration that fails becomes a row with ``error`` set.
    """
    from tokbench.jobs import resolve

    unit = unit_of(loaded)
    steps = action_steps(loaded) if loaded.kind == "action" else frames or 32
    views = views or default_views(loaded.name)
    frame = _input_frame(loaded)
    configs = config_grid(base, loaded.backbone.patch_embed.num_patches, keeps, windows, resets)
    experiment = {"model": loaded.name, "kind": loaded.kind, "convention": "fvcore", "unit": unit,
                  "weights": loaded.weights, "img_size": list(loaded.img_size), "frames_per_clip": steps,
                  "views": views}

    def row(config: MethodConfig, dense_unit: float | None) -> tuple[dict, float | None]:
        job = resolve(loaded, config, 1, experiment)
        if job.error:
            return _ordered(job.identity, job.config_id, job.error), None
        try:
            resolved = loaded.engine(config).resolved
            per_kind = kind_costs(loaded, config, frame)
            counts = step_counts(steps, resolved.reset_every, resolved.reset_mode, not job.dense)
            numbers = unit_columns(per_kind, counts, unit=unit, views=views, head_gmacs=_head_gmacs(loaded, config))
        except Exception as err:  # a failed configuration becomes a row; the others go on
            return _ordered(job.identity, job.config_id, f"{type(err).__name__}: {err}"), None
        raw = _RAW[_cost_key(loaded, config)]
        shown = raw.get(PRUNED, raw[FULL])
        numbers = {"keep_tokens": shown.kept_tokens, **numbers, **_ratio(dense_unit, numbers, unit),
                   "unsupported_ops": ", ".join(f"{op} x{n}" for op, n in shown.unsupported.items())}
        if by_operator:
            numbers["by_operator"] = {op: round(g, 6) for op, g in shown.by_operator.items()}
        return _ordered({**numbers, **job.identity}, job.config_id, ""), numbers[f"gmacs_per_{unit}"]

    dense, dense_unit = row(dense_config(base), None)
    if dense["error"]:
        dense_unit = None
    else:
        dense["gmacs_ratio_vs_dense"] = 1.0
    return [dense] + [row(config, dense_unit)[0] for config in configs]


# -- the paper's reference convention (analytic; docs/method.md section 8) ---------------------------------------


@dataclass(frozen=True)
class PaperModel:
    """What the paper convention needs of a model: its task kind and analytic shapes (docs/method.md 8, 9).

    spatial: the ViT that RGTP prunes; temporal: an action model's encoder over the per-step outputs (grid (1, T),
    prefix 1); num_classes: the classifier after the temporal encoder (action) or on every step (classify);
    steps: spatial steps per view of an action model; img_size: input (H, W).
    """

    name: str
    kind: str
    spatial: ViTArch
    img_size: tuple[int, int]
    temporal: ViTArch | None = None
    num_classes: int = 0
    steps: int | None = None

    def head_gmacs(self) -> float:
        """One view's temporal encoder + classifier (action), GMACs; 0 otherwise."""
        return temporal_head_gmacs(self.temporal, self.num_classes) if self.kind == "action" else 0.0

    def step_classifier_gmacs(self) -> float:
        """A timm classifier's linear head on one step (classify), GMACs; 0 otherwise."""
        if self.kind != "classify" or not self.num_classes:
            return 0.0
        return linear_macs(self.spatial.dim, self.num_classes) / GIGA


def arch_from_model(model: torch.nn.Module) -> ViTArch:
    """The ``ViTArch`` of a timm ``VisionTransformer`` (every block global) or ``VisionTransformerSAM``
    (windowed blocks, global blocks where ``window_size == 0``, decomposed rel-pos)."""
    blocks = list(model.blocks)
    windows = [getattr(b, "window_size", 0) for b in blocks]
    window = max(windows) or None
    return ViTArch(
        depth=len(blocks), dim=model.embed_dim, heads=blocks[0].attn.num_heads,
        mlp_dim=blocks[0].mlp.fc1.out_features, grid=tuple(model.patch_embed.grid_size),
        prefix=getattr(model, "num_prefix_tokens", 0), patch=model.patch_embed.patch_size[0],
        in_chans=model.patch_embed.proj.in_channels, window_size=window,
        global_blocks=tuple(i for i, w in enumerate(windows) if w == 0) if window else (),
        rel_pos=bool(getattr(blocks[0].attn, "use_rel_pos", False)),
    )


arch_from_timm = arch_from_model  # the former name


def temporal_arch(encoder: torch.nn.Module, steps: int) -> ViTArch:
    """An action model's temporal encoder (timm blocks over ``steps`` step outputs + its own CLS) as a ViTArch."""
    blk = encoder.blocks[0]
    return ViTArch(depth=len(encoder.blocks), dim=blk.attn.qkv.in_features, heads=blk.attn.num_heads,
                   mlp_dim=blk.mlp.fc1.out_features, grid=(1, steps), prefix=1)


def vivit_b_arch(name: str, img_size: int | None) -> tuple[ViTArch, ViTArch, int]:
    """Spatial and temporal ``ViTArch`` of ViViT-B (docs/method.md 9.2) and its classifier width."""
    size = img_size or (224 if name == "vivit_b_k400" else 320)
    if size % 16:
        raise ConfigError(f"img_size {size} is not a multiple of the 16-px tubelet")
    spatial = ViTArch(depth=12, dim=768, heads=12, mlp_dim=3072, grid=(size // 16, size // 16), prefix=1)
    temporal = ViTArch(depth=4, dim=768, heads=12, mlp_dim=3072, grid=(1, 16), prefix=1)
    classes = 400 if name == "vivit_b_k400" else 97 + 300  # EPIC: verb and noun heads
    return spatial, temporal, classes


def paper_model(name: str, img_size: int | None = None, loaded: LoadedModel | None = None) -> PaperModel:
    """The paper's analytic ViTDet-B / ViViT-B by name, or the shapes of any ``loaded`` model."""
    if name == "vitdet_b":
        size = img_size or 672
        return PaperModel(name, "features", vitdet_b_arch(size), (size, size))
    if name in PAPER_VIDEO_VIEWS:
        spatial, temporal, classes = vivit_b_arch(name, img_size)
        size = spatial.grid[0] * 16
        return PaperModel(name, "action", spatial, (size, size), temporal, classes, steps=16)
    if loaded is None:
        raise ConfigError(f"no paper-convention architecture for {name!r} without a loaded model; "
                          f"known: {', '.join(PAPER_MODELS)}")
    spatial = arch_from_model(loaded.backbone)
    if loaded.kind == "action":
        steps = action_steps(loaded)
        temporal = loaded.model.temporal
        return PaperModel(loaded.name, "action", spatial, loaded.img_size, temporal_arch(temporal, steps),
                          temporal.head.out_features, steps)
    classes = getattr(loaded.backbone, "num_classes", 0) if loaded.kind == "classify" else 0
    return PaperModel(loaded.name, loaded.kind, spatial, loaded.img_size, num_classes=classes)


def _kind(cost: dict[str, float], extra_gmacs: float = 0.0) -> KindGmacs:
    return KindGmacs(cost["gmacs"] + extra_gmacs, cost["kept_tokens"], cost["overhead_gmacs_rollout"],
                     cost["overhead_gmacs_tracking"], cost["overhead_gmacs_match"],
                     cost["overhead_gmacs_propagation"], cost["kept_tokens_last"])


def paper_kind_costs(model: PaperModel, config: MethodConfig) -> dict[str, KindGmacs]:
    """Reference-convention cost of every frame kind of a resolved ``config`` (rgtp or dense), as row kinds.

    What is counted follows the resolved options, as the engine runs them: K/V reuse (``kv_reuse``), full or
    pattern resets (``reset_mode``, ``reset_pattern``), nearest-kept matching on the shrinking sequence
    (``block0_columns``, ``pruned_score_fill``), ``window_queries``, rollout form and pooling, and a drop schedule
    (``drop_schedule``, on pruned frames; its first block must be 0; ``propagation`` counts 0).
    """
    arch, step_head = model.spatial, model.step_classifier_gmacs()
    if not policy(config.policy).prunes:
        return {"full": _kind(ref_frame_gmacs(arch, "dense"), step_head)}
    if not policy(config.policy).rollout:
        raise ConfigError(f"the paper convention counts rgtp and dense only, not {config.policy!r}")
    schedule = config.schedule
    first = schedule[0][0] if schedule else getattr(config, "prune_block", 0)
    if config.cut != "block0" or first != 0:
        raise ConfigError("the paper convention counts the cut inside block 0 only (cut=block0, prune_block=0, "
                          "a drop_schedule from block 0)")
    kv = config.kv_reuse == "on"
    common = {"rollout_form": config.rollout_form, "rollout_pool": config.rollout_pool, "kv_reuse": kv,
              "window_queries": config.window_queries, "block0_columns": config.block0_columns}

    def fill(kind: str) -> str:
        nearest = fills_nearest_kept(kind, kv_reuse=kv, block0_columns=config.block0_columns,
                                     score_fill=config.pruned_score_fill)
        return "nearest_kept" if nearest else "computed"

    n = arch.num_patches - schedule[0][1] if schedule else kept_count(
        arch.num_patches, config.keep_ratio, config.fg_ratio, config.bg_ratio)
    full = ref_frame_gmacs(arch, "full", **common)
    out = {"full": _kind(full, step_head),
           "pruned": _kind(ref_frame_gmacs(arch, "pruned", keep_tokens=n, track_radius=config.window,
                                           score_fill=fill("pruned"), schedule=schedule, **common), step_head)}
    if config.reset_every and config.reset_mode == "full":
        out["reset"] = out["full"]
    elif config.reset_every:
        pattern_n = len(reset_pattern_indices(arch.grid, config.reset_pattern))
        pattern = ref_frame_gmacs(arch, "pattern", keep_tokens=pattern_n, score_fill=fill("pattern"), **common)
        out["pattern"] = _kind(pattern, step_head)
    return out


def paper_pool(model: PaperModel, config: MethodConfig, rollout_pool: int | None) -> int:
    """Rollout pooling p: as given, else the paper's p = 2 for ViTDet-B under ``preset=reference`` (docs/method.md
    9.1) where it divides the grid, else the configuration's (pooling needs K/V reuse; p > 1 without it fails)."""
    if rollout_pool is not None:
        return rollout_pool
    paper = model.name == "vitdet_b" and config.preset == "reference" and config.kv_reuse == "on"
    return 2 if paper and model.spatial.grid[0] % 2 == 0 else config.rollout_pool


def paper_rows(
    model: PaperModel,
    keeps: list[float],
    *,
    base: MethodConfig,
    windows: list[int] | None = None,
    resets: list[int] | None = None,
    frames: int | None = None,
    views: int | None = None,
    full_fraction: float | None = None,
    rollout_pool: int | None = None,
) -> list[dict]:
    """Paper-convention rows: a dense row, then one per (keep, window, reset) combination.

    frames: steps per clip (default 32; action models use their own step count); views: per clip (default
    ``default_views``); full_fraction (per-frame units only): share of full frames in the average instead of
    the schedule's (the paper's VID runs: 0.12653); rollout_pool: see ``paper_pool``.
    """
    dense_task, unit = is_dense_kind(model.kind), unit_of(model)
    if full_fraction is not None and unit != "frame":
        raise ConfigError("--full-fraction applies to per-frame (detection) rows only")
    steps = model.steps if model.kind == "action" else frames or 32
    views = views or default_views(model.name)
    configs = config_grid(base, model.spatial.num_patches, keeps, windows, resets)
    identity = {"model": model.name, "kind": model.kind, "convention": "paper", "unit": unit,
                "img_size": list(model.img_size), "frames_per_clip": steps, "views": views,
                "full_fraction": full_fraction}

    def row(config: MethodConfig, dense_unit: float | None) -> tuple[dict, float | None]:
        try:
            config = config.resolve(dense_task)
            config = config.replace(rollout_pool=paper_pool(model, config, rollout_pool))
            per_kind = paper_kind_costs(model, config)
            dense = not policy(config.policy).prunes
            counts = step_counts(steps, config.reset_every, config.reset_mode, not dense)
            if full_fraction is not None and not dense:
                counts = {"full": full_fraction, "pruned": 1 - full_fraction}
            numbers = unit_columns(per_kind, counts, unit=unit, views=views, head_gmacs=model.head_gmacs())
        except Exception as err:  # a failed configuration becomes a row; the others go on
            return _failed(identity, config.resolve(dense_task, strict=False), err), None
        n = per_kind["pruned"].kept_tokens if "pruned" in per_kind else model.spatial.num_patches
        numbers = {"keep_tokens": int(n), **numbers, **_ratio(dense_unit, numbers, unit)}
        return _row(identity, config, numbers), numbers[f"gmacs_per_{unit}"]

    dense, dense_unit = row(dense_config(base), None)
    if not dense["error"]:
        dense["gmacs_ratio_vs_dense"] = 1.0
    return [dense] + [row(config, dense_unit)[0] for config in configs]
