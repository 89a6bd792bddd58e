"""``tokbench flops`` rows: per keep budget, the GMACs of each frame kind, the schedule average and the overheads.

fvcore convention: one multiply-add = one MAC, attention counted (SDPA handle / explicit matmuls). Each frame
kind is traced once per budget on the real engine step (``frame_flops``), so a row costs a few traces however
long the run it describes. The method's overhead is split out by tracing the same frame twice:

- rollout on a full frame: RGTP's full frame minus the dense frame;
- rollout on a pruned frame: RGTP's pruned frame minus tracking minus a ``grid`` frame with the same kept tokens;
- tracking: ``N (2r+1)^2 C`` analytically (elementwise work fvcore does not see);
- selection: a sort of N scores, no multiply-adds (0 in this convention).
"""

from __future__ import annotations

from collections import Counter

import torch

from tokbench.config import MethodConfig
from tokbench.engine import FULL, PRUNED, RESET, frame_kind
from tokbench.errors import ConfigError
from tokbench.flops_ref import ViTArch, ref_clip_gmacs, ref_frame_gmacs, schedule_average, vitdet_b_arch
from tokbench.frame_flops import KindCost, frame_costs
from tokbench.models.zoo import LoadedModel
from tokbench.selection import kept_count, reset_pattern_indices

CONVENTION = "fvcore: 1 multiply-add = 1 MAC; attention counted; tracking analytic"


def keep_ratio(keep: float, num_patches: int) -> float:
    """A keep budget as a ratio: values in (0, 1] are ratios, whole numbers above 1 are token counts."""
    if keep <= 0 or (keep > 1 and keep != int(keep)):
        raise ConfigError(f"keep must be a ratio in (0, 1] or a whole token count, got {keep}")
    if keep > num_patches:
        raise ConfigError(f"keep {int(keep)} is more than the {num_patches} patch tokens of a frame")
    return keep if keep <= 1 else keep / num_patches


def schedule_counts(frames: int, reset_every: int) -> Counter:
    """How many frames of each kind a clip of ``frames`` frames runs."""
    return Counter(frame_kind(t, reset_every) for t in range(frames))


def _r(x: float) -> float:
    return round(x, 5)


def dense_row(loaded: LoadedModel, frame: torch.Tensor) -> tuple[dict, KindCost]:
    cost = frame_costs(loaded.engine(MethodConfig(policy="dense")), frame)[FULL]
    row = {"policy": "dense", "keep_ratio": 1.0, "keep_tokens": cost.kept_tokens, "gmacs": _r(cost.gmacs),
           "gmacs_full": _r(cost.gmacs), "gmacs_pruned": None, "gmacs_reset": None, "gmacs_ratio_vs_dense": 1.0}
    return row, cost


def flop_rows(
    loaded: LoadedModel,
    keeps: list[float],
    *,
    base: MethodConfig,
    frames: int = 32,
    by_operator: bool = False,
) -> list[dict]:
    """A dense row, then one row per keep budget (``base`` supplies every other knob)."""
    h, w = loaded.img_size
    frame = torch.randn(1, 3, h, w, generator=torch.Generator().manual_seed(0))
    dense, dense_cost = dense_row(loaded, frame)
    num_patches = dense["keep_tokens"]
    counts = schedule_counts(frames, base.reset_every)
    rows = [dense | ({"by_operator": _ops(dense_cost)} if by_operator else {})]
    for keep in keeps:
        config = base.replace(keep_ratio=keep_ratio(keep, num_patches))
        costs = frame_costs(loaded.engine(config), frame)
        bare = frame_costs(loaded.engine(config.replace(policy="grid")), frame)[PRUNED]
        full, pruned = costs[FULL], costs[PRUNED]
        reset = costs.get(RESET, full)
        average = (full.gmacs * counts[FULL] + reset.gmacs * counts[RESET] + pruned.gmacs * counts[PRUNED]) / frames
        row = {
            "policy": config.policy,
            "keep_ratio": round(config.keep_ratio, 5),
            "keep_tokens": pruned.kept_tokens,
            "window": config.window,
            "reset_every": config.reset_every,
            "frames": frames,
            "gmacs": _r(average),
            "gmacs_full": _r(full.gmacs),
            "gmacs_pruned": _r(pruned.gmacs),
            "gmacs_reset": _r(reset.gmacs),
            "gmacs_ratio_vs_dense": _r(dense["gmacs"] / average),
            "overhead_gmacs_rollout_full": round(full.gmacs - dense["gmacs"], 9),
            "overhead_gmacs_rollout_pruned": round(pruned.gmacs - pruned.overhead_gmacs_tracking - bare.gmacs, 9),
            "overhead_gmacs_tracking": round(pruned.overhead_gmacs_tracking, 9),
            "overhead_gmacs_selection": 0.0,
            "unsupported_ops": ", ".join(f"{op} x{n}" for op, n in pruned.unsupported.items()),
        }
        rows.append(row | ({"by_operator": _ops(pruned)} if by_operator else {}))
    return rows


def _ops(cost: KindCost) -> dict[str, float]:
    return {op: round(g, 6) for op, g in cost.by_operator.items()}


# -- the paper's reference convention (analytic; method.md section 8) ----------------------------------------------

PAPER_MODELS = ("vitdet_b", "vivit_b_k400", "vivit_b_epic")
PAPER_CONVENTION = "paper: MACs + bias/residual adds, patch embedding and norms not counted (method.md 8)"


def arch_from_timm(model) -> ViTArch:
    """The ``ViTArch`` of a timm VisionTransformer (global attention in every block)."""
    blk = model.blocks[0]
    return ViTArch(depth=len(model.blocks), dim=model.embed_dim, heads=blk.attn.num_heads,
                   mlp_dim=blk.mlp.fc1.out_features, grid=tuple(model.patch_embed.grid_size),
                   prefix=model.num_prefix_tokens, patch=model.patch_embed.patch_size[0])


def vivit_b_arch(name: str, img_size: int | None) -> tuple[ViTArch, ViTArch, int]:
    """Spatial and temporal ``ViTArch`` of ViViT-B (method.md 9.2) and its classifier width."""
    size = img_size or (224 if name == "vivit_b_k400" else 320)
    if size % 16:
        raise ConfigError(f"img_size {size} is not a multiple of the 16-px tubelet")
    spatial = ViTArch(depth=12, dim=768, heads=12, mlp_dim=3072, grid=(size // 16, size // 16), prefix=1)
    temporal = ViTArch(depth=4, dim=768, heads=12, mlp_dim=3072, grid=(1, 16), prefix=1)
    classes = 400 if name == "vivit_b_k400" else 97 + 300  # EPIC: verb and noun heads
    return spatial, temporal, classes


def paper_rows(
    name: str,
    keeps: list[float],
    *,
    base: MethodConfig,
    img_size: int | None = None,
    arch: ViTArch | None = None,
    frames: int = 32,
    full_fraction: float | None = None,
    rollout_pool: int | None = None,
) -> list[dict]:
    """Rows in the paper's convention for ViTDet-B (per frame), ViViT-B (per clip), or any plain ViT ``arch``."""
    video = name.startswith("vivit")
    if name == "vitdet_b":
        arch = vitdet_b_arch(img_size or 672)
    elif video:
        arch, temporal, classes = vivit_b_arch(name, img_size)
    elif arch is None:
        raise ConfigError(f"no paper-convention architecture for {name!r}; known: {', '.join(PAPER_MODELS)}")
    pool = rollout_pool or (2 if base.preset == "reference" and name == "vitdet_b" and arch.grid[0] % 2 == 0 else 1)
    frames = 16 if video else frames
    counts = schedule_counts(frames, base.reset_every)
    kv_reuse = not video and base.kv_reuse != "off"
    common = {"rollout_form": base.rollout_form, "kv_reuse": kv_reuse, "block0_columns": base.block0_columns,
              "score_fill": base.pruned_score_fill if base.pruned_score_fill != "previous" else "computed"}
    dense = ref_frame_gmacs(arch, "dense")["gmacs"]
    full = ref_frame_gmacs(arch, "full", rollout_pool=pool, **common)
    pattern_n = len(reset_pattern_indices(arch.grid, base.reset_pattern))

    def per_unit(per_kind: dict, weights: dict) -> float:
        if video:  # one view: the spatial steps, then the temporal encoder and classifier; x 12 views
            return ref_clip_gmacs(per_kind, weights, temporal=temporal, num_classes=classes, views=12)
        return schedule_average({k: v["gmacs"] for k, v in per_kind.items()}, weights)

    unit = "clip (12 views x 16 steps)" if video else "frame"
    dense_unit = per_unit({"dense": {"gmacs": dense}}, {"dense": frames if video else 1})
    rows = [{"policy": "dense", "convention": "paper", "unit": unit, "keep_tokens": arch.num_patches,
             "gmacs": round(dense_unit, 4), "gmacs_full": round(dense, 4), "gmacs_pruned": None}]
    for keep in keeps:
        ratio = keep_ratio(keep, arch.num_patches)
        n = kept_count(arch.num_patches, ratio, base.fg_ratio, base.bg_ratio)
        pruned = ref_frame_gmacs(arch, "pruned", keep_tokens=n, track_radius=base.window,
                                 rollout_pool=pool if kv_reuse else 1, **common)
        reset_kind = "full" if kv_reuse else "pattern"
        reset = full if kv_reuse else ref_frame_gmacs(arch, "pattern", keep_tokens=pattern_n, **common)
        weights = {"full": counts[FULL], "pruned": counts[PRUNED]}
        weights[reset_kind] = weights.get(reset_kind, 0) + counts[RESET]
        if full_fraction is not None and not video:
            weights = {"full": full_fraction, "pruned": 1 - full_fraction}
        per_kind = {"full": full, "pruned": pruned, "pattern": reset}
        average = per_unit({k: per_kind[k] for k in weights}, weights)
        rows.append({
            "policy": "rgtp", "convention": "paper", "unit": unit, "keep_ratio": round(ratio, 5), "keep_tokens": n,
            "window": base.window, "reset_every": base.reset_every, "rollout_form": base.rollout_form,
            "rollout_pool": pool, "gmacs": round(average, 4), "gmacs_full": round(full["gmacs"], 4),
            "gmacs_pruned": round(pruned["gmacs"], 4), "gmacs_reset": round(reset["gmacs"], 4),
            "gmacs_ratio_vs_dense": round(dense_unit / average, 4),
            "overhead_gmacs_rollout": round(pruned["overhead_gmacs_rollout"], 6),
            "overhead_gmacs_tracking": round(pruned["overhead_gmacs_tracking"], 6),
            "overhead_gmacs_match": round(pruned["overhead_gmacs_match"], 6),
            "overhead_gmacs_rollout_full": round(full["overhead_gmacs_rollout"], 6),
            "frac_full_frames": round(1 - weights["pruned"] / sum(weights.values()), 5),
        })
    return rows
