"""The method configuration: one frozen dataclass, presets, validation, ``--set`` parsing (docs/method.md 10)."""

from __future__ import annotations

import dataclasses
import typing
from dataclasses import dataclass

from tokbench.errors import ConfigError, unknown_name
from tokbench.policies import POLICIES, policy
from tokbench.rollout import HEAD_FUSIONS
from tokbench.schedule import PROPAGATIONS, format_schedule, parse_schedule
from tokbench.selection import ORDERS, RESET_PATTERNS, TIE_BREAKS, check_ratios
from tokbench.tracking import BOUNDS, FEATURES, SIMILARITIES

PRESETS = ("default", "reference", "robust")

_PRESET_VALUES: dict[str, dict[str, object]] = {
    "default": {},
    "reference": {
        "tie_break": "unstable",
        "track_bounds": "sentinel",
        "anchor_fallback": "no_boxes",
        "rollout_form": "matrix",
    },
    "robust": {
        "tie_break": "raster",
        "similarity": "cosine",
        "track_bounds": "mask",
        "anchor_fallback": "empty",
        "anchor_clip_end": "g",
        "rollout_form": "vector",
        "block0_columns": "keep",
        "pruned_score_fill": "computed",
    },
}

_CHOICES: dict[str, tuple[str, ...]] = {
    "policy": tuple(POLICIES),
    "order": ORDERS,
    "tie_break": TIE_BREAKS,
    "similarity": SIMILARITIES,
    "track_bounds": BOUNDS,
    "reset_mode": ("auto", "full", "pattern"),
    "reset_pattern": RESET_PATTERNS,
    "head_fusion": HEAD_FUSIONS,
    "rollout_form": ("vector", "matrix"),
    "rollout_norm": ("sum", "none"),
    "block0_columns": ("cut", "keep"),
    "pruned_score_fill": ("auto", "computed", "nearest_kept", "previous"),
    "cut": ("block0", "input"),
    "kv_reuse": ("auto", "on", "off"),
    "anchor_fallback": ("empty", "no_boxes"),
    "anchor_clip_end": ("g_minus_1", "g"),
    "track_features": FEATURES,
    "window_queries": ("all", "kept"),
    "sdpa_flops": ("handle", "explicit"),
    "propagation": PROPAGATIONS,
    "preset": PRESETS,
}

# docs/method.md section 10 names that differ from the field names, and values spelled differently there
ALIASES: dict[str, str] = {
    "fg_sample_ratio": "fg_ratio",
    "bg_sample_ratio": "bg_ratio",
    "sampling_order": "order",
    "track_radius": "window",
    "track_similarity": "similarity",
    "track_min_gain_pct": "min_gain_pct",
}
_VALUE_ALIASES: dict[str, dict[str, str]] = {"order": {"rank_raster": "rank"}}


@dataclass(frozen=True)
class MethodConfig:
    """Every knob of a pruning run. Names follow docs/method.md section 10; defaults are ``preset=default``."""

    policy: str = "rgtp"
    keep_ratio: float = 0.111  # rho: foreground size round(rho * N)
    fg_ratio: float = 1.0  # phi: foreground stride round(1 / phi), by rank
    bg_ratio: float = 0.0  # beta: background stride round(1 / beta), raster order; 0 = none
    order: str = "rank"  # rank | gilbert
    tie_break: str = "raster"
    window: int = 1  # tracking radius r; 0 = off
    similarity: str = "dot"
    track_bounds: str = "mask"
    track_features: str = "patch_embed"  # patch_embed: z^t; block0_keys: the cut block's head-averaged keys
    min_gain_pct: float | None = None
    reset_every: int = 8  # k; 0 = never
    reset_mode: str = "auto"  # auto: full for dense tasks, pattern for classification
    reset_pattern: str = "1in2"
    head_fusion: str = "rms"
    rollout_form: str = "vector"
    rollout_pool: int = 1  # p: p x p cell pooling of the rollout (K/V reuse only)
    rollout_norm: str = "sum"
    block0_columns: str = "cut"
    pruned_score_fill: str = "auto"
    cut: str = "block0"  # block0: after block prune_block's attention + residual (reference); input: before block 0
    prune_block: int = 0  # the block whose attention + residual precedes the cut (cut=block0)
    drop_schedule: str = ""  # gradual drop "BLOCK:COUNT[,...]" (docs/method.md 7.1); "" = one cut at prune_block
    propagation: str = "none"  # scores of later drops: none | supplement | reference (docs/method.md 7.2)
    kv_reuse: str = "auto"  # auto: on for dense tasks (and policies that ask for it: eventful)
    window_queries: str = "all"  # windowed blocks after the cut: all queries of every window (reference), or kept
    sdpa_flops: str = "handle"  # handle: fused SDPA; explicit: every attention as q k^T, softmax, @ v
    anchor_score_thr: float = 0.1
    anchor_fallback: str = "empty"
    anchor_clip_end: str = "g_minus_1"
    preset: str = "default"
    seed: int = 0

    def __post_init__(self) -> None:
        for name, choices in _CHOICES.items():
            value = getattr(self, name)
            if value not in choices:
                raise ConfigError(f"{name} must be one of {', '.join(choices)}; got {value!r}")
        check_ratios(self.keep_ratio, self.fg_ratio, self.bg_ratio)
        if self.rollout_pool not in (1, 2, 4):
            raise ConfigError(f"rollout_pool must be 1, 2 or 4; got {self.rollout_pool}")
        if self.window < 0:
            raise ConfigError(f"tracking window must be >= 0, got {self.window}")
        if self.reset_every < 0:
            raise ConfigError(f"reset interval must be >= 0 (0 = never), got {self.reset_every}")
        if self.prune_block < 0:
            raise ConfigError(f"prune_block must be >= 0, got {self.prune_block}")
        if self.cut == "input" and self.prune_block:
            raise ConfigError("prune_block applies to cut=block0; cut=input prunes before block 0")
        if self.cut == "input" and self.track_features == "block0_keys":
            raise ConfigError("track_features=block0_keys needs cut=block0: no block runs before an input cut")
        schedule = parse_schedule(self.drop_schedule)
        object.__setattr__(self, "drop_schedule", format_schedule(schedule))
        if schedule and self.cut == "input":
            raise ConfigError("drop_schedule prunes at block cuts; it needs cut=block0")
        if schedule and self.prune_block not in (0, schedule[0][0]):
            raise ConfigError(f"drop_schedule starts at block {schedule[0][0]} but prune_block is {self.prune_block}; "
                              "the schedule's first block is the cut")
        if self.propagation != "none" and len(schedule) < 2:
            raise ConfigError(f"propagation={self.propagation} scores the drops after the first one: give a "
                              "drop_schedule with at least two blocks (e.g. 0:300,3:50)")

    @property
    def schedule(self) -> tuple[tuple[int, int], ...]:
        """The drop schedule as ``((block, count), ...)`` in block order (``()``: one-shot pruning)."""
        return parse_schedule(self.drop_schedule)

    def computed_scores(self, kv_reuse: bool) -> bool:
        """Whether a pruned frame's rollout gives every position a computed score (docs/method.md 2.7): with K/V reuse
        (buffered attention rows), or with ``block0_columns=keep`` at a ``block0`` cut."""
        return kv_reuse or (self.block0_columns == "keep" and self.cut == "block0")

    def resolve(self, dense: bool, strict: bool = True) -> MethodConfig:
        """A copy with every ``auto`` replaced by what runs for a ``dense`` (or classification) task.

        ``kv_reuse``: on for dense tasks and for policies that ask for it (eventful); ``reset_mode``: full for dense
        tasks, else pattern; ``pruned_score_fill``: computed where every position gets a computed score, else
        nearest_kept. Raises ``ConfigError`` for an explicit ``pruned_score_fill=computed`` where a rollout policy
        (RGTP) has no computed score (unless not ``strict``: the resolved values of a configuration that will be
        reported as failed).
        """
        kv = self.kv_reuse
        if kv == "auto":
            kv = "on" if dense or policy(self.policy).kv_reuse else "off"
        reset = self.reset_mode if self.reset_mode != "auto" else ("full" if dense else "pattern")
        computed = self.computed_scores(kv == "on")
        fill = self.pruned_score_fill
        if fill == "auto":
            fill = "computed" if computed else "nearest_kept"
        if strict and fill == "computed" and not computed and policy(self.policy).rollout:
            raise ConfigError("pruned_score_fill=computed needs K/V reuse or block0_columns=keep at cut=block0; "
                              "pruned positions have no computed score here")
        block = self.schedule[0][0] if self.schedule else self.prune_block
        return self.replace(kv_reuse=kv, reset_mode=reset, pruned_score_fill=fill, prune_block=block)

    @classmethod
    def from_preset(cls, preset: str = "default", **overrides) -> MethodConfig:
        """Preset values, then explicit overrides (``None`` overrides are ignored)."""
        if preset not in PRESETS:
            raise ConfigError(f"preset must be one of {', '.join(PRESETS)}; got {preset!r}")
        unknown = set(overrides) - {f.name for f in dataclasses.fields(cls)}
        if unknown:
            raise ConfigError(f"unknown method option(s): {', '.join(sorted(unknown))}")
        if overrides.get("preset") is not None:
            raise ConfigError("the preset is the first argument of from_preset, not an override")
        values = {**_PRESET_VALUES[preset], **{k: v for k, v in overrides.items() if v is not None}}
        return cls(preset=preset, **values)

    def as_dict(self) -> dict[str, object]:
        return dataclasses.asdict(self)

    def replace(self, **changes) -> MethodConfig:
        return dataclasses.replace(self, **changes)


def _coerce(name: str, raw: str, kind: object) -> object:
    """``raw`` as the type of field ``name`` (``int``, ``float``, ``str``, optionally ``| None``)."""
    args = typing.get_args(kind)
    if type(None) in args:
        if raw.lower() == "none":
            return None
        kind = next(a for a in args if a is not type(None))
    try:
        if kind is int:
            return int(raw)
        if kind is float:
            return float(raw)
    except ValueError:
        raise ConfigError(f"--set {name}={raw}: expected {'an integer' if kind is int else 'a number'}") from None
    return _VALUE_ALIASES.get(name, {}).get(raw, raw)


def parse_set(items: list[str]) -> dict[str, object]:
    """``--set KEY=VALUE`` items -> typed overrides for ``MethodConfig.from_preset``.

    Keys are field names or docs/method.md section 10 names (``track_radius``, ``fg_sample_ratio``, ...); values are
    coerced to the field's type (``none`` clears an optional number). Later items win. Choices are validated when
    the config is built. Raises ``ConfigError`` for an item without ``=``, an unknown key (with close matches) or a
    value of the wrong type.
    """
    hints = typing.get_type_hints(MethodConfig)
    names = [f.name for f in dataclasses.fields(MethodConfig) if f.name != "preset"]
    overrides: dict[str, object] = {}
    for item in items:
        key, sep, raw = item.partition("=")
        key, raw = key.strip(), raw.strip()
        if not sep or not key:
            raise ConfigError(f"--set expects KEY=VALUE, got {item!r}")
        if key in ("preset", "policy", "seed"):  # each has its own option, which would silently win
            raise ConfigError(f"choose the {key} with --{key}, not --set")
        name = ALIASES.get(key, key)
        if name not in names:
            raise ConfigError(str(unknown_name("method option", key, [*names, *ALIASES])))
        overrides[name] = _coerce(name, raw, hints[name])
    return overrides
