"""The method configuration: one frozen dataclass, presets, validation (method.md section 11)."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from tokbench.errors import ConfigError
from tokbench.policies import BASELINES
from tokbench.rollout import HEAD_FUSIONS
from tokbench.selection import ORDERS, RESET_PATTERNS, TIE_BREAKS, check_ratios
from tokbench.tracking import BOUNDS, SIMILARITIES

PRESETS = ("default", "reference", "robust")
POLICIES = ("rgtp", "dense", *BASELINES)

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
    "policy": POLICIES,
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
    "preset": PRESETS,
}


@dataclass(frozen=True)
class MethodConfig:
    """Every knob of a pruning run. Names follow method.md section 11; defaults are ``preset=default``."""

    policy: str = "rgtp"
    keep_ratio: float = 0.111  # rho: foreground size round(rho * N)
    fg_ratio: float = 1.0  # phi: foreground stride round(1 / phi), by rank
    bg_ratio: float = 0.0  # beta: background stride round(1 / beta), raster order; 0 = none
    order: str = "rank"  # rank | gilbert
    tie_break: str = "raster"
    window: int = 1  # tracking radius r; 0 = off
    similarity: str = "dot"
    track_bounds: str = "mask"
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
    cut: str = "block0"  # block0: after block 0's attention + residual (reference); input: before block 0
    kv_reuse: str = "auto"  # auto: on for dense tasks
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

    @classmethod
    def from_preset(cls, preset: str = "default", **overrides) -> MethodConfig:
        """Preset values, then explicit overrides (``None`` overrides are ignored)."""
        if preset not in PRESETS:
            raise ConfigError(f"preset must be one of {', '.join(PRESETS)}; got {preset!r}")
        unknown = set(overrides) - {f.name for f in dataclasses.fields(cls)}
        if unknown:
            raise ConfigError(f"unknown method option(s): {', '.join(sorted(unknown))}")
        values = {**_PRESET_VALUES[preset], **{k: v for k, v in overrides.items() if v is not None}}
        return cls(preset=preset, **values)

    def as_dict(self) -> dict[str, object]:
        return dataclasses.asdict(self)

    def replace(self, **changes) -> MethodConfig:
        return dataclasses.replace(self, **changes)
