"""The paper's reference FLOP convention (``gmacs_ref``), analytic: pure functions, no tracing, no torch.

Every count is in multiply-accumulates (MACs) plus single additions, reported in GMACs (1e9), batch 1. The paper
calls this "GFLOPs"; a ``gflops`` column, if ever shown, would be 2 x ``gmacs`` under fvcore's convention only.

What each convention counts (docs/method.md §8):

=================================  ==============================  ==========================================
item                               reference (``gmacs_ref``)       fvcore (``tokbench.flops.count_gmacs``)
=================================  ==============================  ==========================================
linear / matmul / einsum           MACs                            MACs
bias adds                          1 per output element            0
residual, position-encoding add    1 per element                   0
attention (q kᵀ, attn v)           2·H·n_q·n_k·C_h                 same, via the SDPA handle or explicit matmuls
decomposed rel-pos (a×b grid)      H·a·b·(a+b)·C_h + 2·H·(ab)²     einsum MACs only (not modelled here)
patch-embedding conv               0                               N·C·in_chans·p²
LayerNorm                          0                               5 per element (affine)
softmax, GELU, sort, gather        0                               0 (reported as unsupported/ignored)
pooling, upsampling                0                               adaptive pool 1/elem, bilinear 4/output elem
detection heads, final norm        0                               whatever is traced
temporal encoder + classifier      counted (video classification)  whatever is traced
RGTP rollout products              matrix M³ / vector M² per block added analytically (state-only work is
                                                                   removed by tracing)
tracking, nearest-kept matching    N(2r+1)²C, (N−n)·n·C_h          added analytically
propagation solves (§7.2)          0                               n³/3 + n² per solving block, analytic
rollout I-add, row norm, anchors   0                               0
=================================  ==============================  ==========================================

Windowed attention (ViTDet): the grid is padded to a multiple of the window size, as detectron2's
``window_partition`` does, and every padded window is counted (42×42 with 14×14 windows: 9 windows; 64×64: padded
to 70×70, 25 windows of 196). Token-wise ops (QKV, projection, MLP) are counted on the N real tokens only, and
rel-pos terms per window call on the ws×ws window. The 672-px anchors do not depend on this choice (42 = 3·14).

A drop schedule (§7.1, ``((0, c_1), (b_2, c_2), ...)``) changes the token count per block (``block_counts``): every
scheduled block runs its QKV, attention, projection and first residual at the count entering it and its MLP and
second residual at the count after its drop; later blocks' queries are the surviving tokens.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from tokbench.errors import ConfigError
from tokbench.schedule import block_tokens

GIGA = 1e9

FRAME_KINDS = ("dense", "full", "pruned", "pattern")
ROLLOUT_FORMS = ("matrix", "vector")
WINDOW_QUERIES = ("all", "kept")
BLOCK0_COLUMNS = ("cut", "keep")
SCORE_FILLS = ("auto", "computed", "nearest_kept", "previous")

Schedule = tuple[tuple[int, int], ...]  # a drop schedule ((block, count), ...), as MethodConfig.schedule gives it


@dataclass(frozen=True)
class ViTArch:
    """Shape description of a plain (timm-style) or ViTDet-style ViT backbone; all that FLOP formulas need.

    depth: L blocks; dim: C channels; heads: H; mlp_dim: MLP hidden width; grid: (h, w) patch grid, N = h·w;
    prefix: P prefix tokens (CLS, registers); patch / in_chans: patch-embedding conv (fvcore only).
    window_size: ws for windowed attention (None: every block is global); global_blocks: the blocks with global
    attention when ws is set; rel_pos: decomposed relative-position terms in every attention call.
    """

    depth: int
    dim: int
    heads: int
    mlp_dim: int
    grid: tuple[int, int]
    prefix: int = 0
    patch: int = 16
    in_chans: int = 3
    window_size: int | None = None
    global_blocks: tuple[int, ...] = ()
    rel_pos: bool = False

    def __post_init__(self) -> None:
        if self.dim % self.heads:
            raise ConfigError(f"dim {self.dim} is not divisible by heads {self.heads}")
        if min(self.depth, self.dim, self.heads, self.mlp_dim, *self.grid) < 1 or self.prefix < 0:
            raise ConfigError(f"invalid ViT shape: {self}")
        if self.window_size is None and self.global_blocks:
            raise ConfigError("global_blocks only makes sense with window_size (otherwise every block is global)")
        if any(not 0 <= b < self.depth for b in self.global_blocks):
            raise ConfigError(f"global_blocks {self.global_blocks} outside 0..{self.depth - 1}")
        if self.window_size is not None and self.prefix:
            raise ConfigError("windowed attention with prefix tokens is not supported")

    @property
    def num_patches(self) -> int:
        """N = h·w."""
        return self.grid[0] * self.grid[1]

    @property
    def num_tokens(self) -> int:
        """N' = P + N."""
        return self.prefix + self.num_patches

    @property
    def head_dim(self) -> int:
        """C_h = C / H."""
        return self.dim // self.heads

    def is_global(self, block: int) -> bool:
        return self.window_size is None or block in self.global_blocks

    @property
    def rollout_blocks(self) -> tuple[int, ...]:
        """Blocks that join the rollout: the global ones (windowed blocks act as identity, [REF])."""
        return tuple(b for b in range(self.depth) if self.is_global(b))

    @property
    def num_windows(self) -> int:
        """Windows per windowed block after padding the grid to a multiple of ws (0 for all-global models)."""
        if self.window_size is None:
            return 0
        ws = self.window_size
        return -(-self.grid[0] // ws) * -(-self.grid[1] // ws)


def vitdet_b_arch(img_size: int = 672) -> ViTArch:
    """ViTDet-B as in the paper (§9.1): 12 blocks, C = 768, 14×14 windows, global blocks {2, 5, 8, 11}, rel-pos."""
    if img_size % 16:
        raise ConfigError(f"img_size {img_size} is not a multiple of the 16-px patch")
    g = img_size // 16
    return ViTArch(
        depth=12,
        dim=768,
        heads=12,
        mlp_dim=3072,
        grid=(g, g),
        window_size=14,
        global_blocks=(2, 5, 8, 11),
        rel_pos=True,
    )


# --------------------------------------------------------------------------------------------------------------
# Building blocks (MACs + adds, integers)


def attention_macs(arch: ViTArch, n_q: int, n_k: int) -> int:
    """q·kᵀ plus attn·v for one attention call with n_q queries and n_k keys: 2·H·n_q·n_k·C_h."""
    return 2 * arch.heads * n_q * n_k * arch.head_dim


def rel_pos_macs(arch: ViTArch, a: int, b: int) -> int:
    """Decomposed relative positions over an a×b grid (one attention call): H·ab(a+b)·C_h MACs + 2·H·(ab)² adds."""
    return arch.heads * a * b * (a + b) * arch.head_dim + 2 * arch.heads * (a * b) ** 2


def attn_side_macs(arch: ViTArch, n: int) -> int:
    """QKV and projection (MACs + biases) and the first residual add for n tokens: n·C·4C + n·4C + n·C."""
    c = arch.dim
    return n * c * 4 * c + n * 4 * c + n * c


def mlp_side_macs(arch: ViTArch, n: int) -> int:
    """Both MLP linears (MACs + biases) and the second residual add for n tokens."""
    c, m = arch.dim, arch.mlp_dim
    return 2 * n * c * m + n * (m + c) + n * c


def mixing_macs(arch: ViTArch, block: int, n_q: int, n_k: int, window_queries: str = "all") -> int:
    """Token mixing of one block: attention plus rel-pos terms.

    Global block: one n_q × n_k attention; rel-pos over the full h×w grid (the reference's count). Windowed block:
    every padded window with all ws² queries and its rel-pos terms (``window_queries='all'``), or only the n_q kept
    queries, each against ws² keys with rel-pos terms for those queries only (``'kept'``), as the engine runs it.
    """
    if arch.is_global(block):
        out = attention_macs(arch, n_q, n_k)
        return out + (rel_pos_macs(arch, *arch.grid) if arch.rel_pos else 0)
    ws = arch.window_size
    if window_queries == "all":
        out = arch.num_windows * attention_macs(arch, ws * ws, ws * ws)
        return out + (arch.num_windows * rel_pos_macs(arch, ws, ws) if arch.rel_pos else 0)
    return attention_macs(arch, n_q, ws * ws) + (rel_pos_query_macs(arch, n_q, ws, ws) if arch.rel_pos else 0)


def rel_pos_query_macs(arch: ViTArch, n_q: int, a: int, b: int) -> int:
    """Decomposed relative positions of n_q queries over an a×b key grid: H·n_q·(a+b)·C_h MACs + 2·H·n_q·ab adds."""
    return arch.heads * n_q * (a + b) * arch.head_dim + 2 * arch.heads * n_q * a * b


def linear_macs(in_features: int, out_features: int, tokens: int = 1, bias: bool = True) -> int:
    """A linear layer on `tokens` rows, reference convention (MACs + bias adds), e.g. a classifier."""
    return tokens * out_features * (in_features + int(bias))


# --------------------------------------------------------------------------------------------------------------
# RGTP overhead


def rollout_cells(arch: ViTArch, pool: int = 1) -> int:
    """M = P + (h/p)·(w/p): the side of the rollout matrices after p×p pooling."""
    h, w = arch.grid
    if pool < 1 or h % pool or w % pool:
        raise ConfigError(f"rollout_pool {pool} must divide the {h}x{w} grid")
    return arch.prefix + (h // pool) * (w // pool)


def rollout_macs(
    arch: ViTArch,
    *,
    form: str = "matrix",
    pool: int = 1,
    kept: int | None = None,
    block0_columns: str = "cut",
    schedule: Schedule = (),
) -> int:
    """Rollout products over the participating blocks (§2.4, §2.7).

    kept=None and no schedule: full-size matrices (full frames, and pruned frames with K/V reuse, whose
    attention-row buffers complete them): matrix form M³ per block, including the first product with I; vector
    form M² per block. kept=n or a drop schedule: the shrinking sequence (no K/V reuse), see ``shrinking_rollout_macs``.
    Pooling needs full-size matrices (p = 1 there).
    """
    _check(form, ROLLOUT_FORMS, "rollout_form")
    _check(block0_columns, BLOCK0_COLUMNS, "block0_columns")
    if kept is None and not schedule:
        power = 3 if form == "matrix" else 2
        return len(arch.rollout_blocks) * rollout_cells(arch, pool) ** power
    if pool != 1:
        raise ConfigError("rollout_pool > 1 on pruned frames needs kv_reuse (pooled rows need every query)")
    return shrinking_rollout_macs(arch, form=form, kept=kept, block0_columns=block0_columns, schedule=schedule)


def shrinking_rollout_macs(
    arch: ViTArch, *, form: str, kept: int | None, block0_columns: str = "cut", schedule: Schedule = ()
) -> int:
    """Rollout on the shrinking sequence (no K/V reuse), the cut inside block 0 keeping n patches.

    Matrix form (one cut only): Σ m_l³ with block 0 at N'³ and later blocks at m = P + n. Vector form: each
    participating block applies its matrix with the rows of the tokens after its cut and the columns of the tokens
    entering it, (P + n_after)·(P + n_before): (P+n)² on a block without a drop, (P+n)·N' at block 0 with
    ``block0_columns='keep'``; ``'cut'`` cuts block 0's columns to the kept tokens too, (P+n)².
    """
    counts = block_counts(arch, kept, schedule)
    p, blocks = arch.prefix, arch.rollout_blocks
    if form == "matrix":
        if block0_columns == "keep":
            raise ConfigError("block0_columns='keep' is computed in vector form; use rollout_form='vector'")
        if schedule:
            raise ConfigError("rollout_form=matrix with a drop_schedule on a shrinking sequence is not counted; "
                              "use rollout_form=vector")
        m = p + counts[0][1]
        return sum((arch.num_tokens if b == 0 else m) ** 3 for b in blocks)
    total = 0
    for b in blocks:
        rows, cols = p + counts[b][1], p + counts[b][0]
        total += rows * (rows if b == 0 and block0_columns == "cut" else cols)
    return total


def tracking_macs(arch: ViTArch, radius: int) -> int:
    """Window-r token matching on patch embeddings (§4): N·(2r+1)²·C (0 for r = 0)."""
    if radius < 0:
        raise ConfigError(f"track_radius must be >= 0, got {radius}")
    return arch.num_patches * (2 * radius + 1) ** 2 * arch.dim if radius else 0


def match_macs(arch: ViTArch, kept: int) -> int:
    """Nearest-kept fill of pruned scores (§2.7): (N − n)·n·C_h."""
    return (arch.num_patches - kept) * kept * arch.head_dim


# --------------------------------------------------------------------------------------------------------------
# Frames and schedules


def block_counts(arch: ViTArch, kept: int | None = None, schedule: Schedule = ()) -> list[tuple[int, int]]:
    """Patch tokens of every block of one frame as ``(entering it, after its cut)``; the prefix is not counted.

    Dense (kept None, no schedule): ``(N, N)`` everywhere. One cut inside block 0 keeping ``kept`` = n: ``(N, n)``,
    then ``(n, n)``. A drop schedule ``((0, c_1), (b_2, c_2), ...)`` (§7.1): block 0 keeps N − c_1 and each later
    scheduled block b_j drops c_j after its attention + residual; ``kept``, if given, must be N − c_1. The second
    entries are ``tokbench.schedule.block_tokens``.
    """
    n = arch.num_patches
    if not schedule:
        after = n if kept is None else kept
        return [(n, after)] + [(after, after)] * (arch.depth - 1)
    if min(b for b, _ in schedule) != 0:
        raise ConfigError(f"the reference convention cuts inside block 0: a drop_schedule must start at block 0, "
                          f"not {min(b for b, _ in schedule)}")
    after = block_tokens(n, arch.depth, tuple(sorted(schedule)))
    if kept is not None and kept != after[0]:
        raise ConfigError(f"keep_tokens {kept} disagrees with the drop_schedule, whose block 0 keeps {after[0]}")
    return list(zip([n] + after[:-1], after, strict=True))


def backbone_macs(
    arch: ViTArch,
    kept: int | None = None,
    *,
    kv_reuse: bool = True,
    window_queries: str = "all",
    schedule: Schedule = (),
) -> int:
    """Backbone of one frame with the cut inside block 0 (kept=None and no schedule: dense).

    Position-encoding add on all N' tokens. Block 0: QKV, attention (all N'), projection and residual 1 at N';
    MLP and residual 2 at P+n. Blocks 1…L−1: token-wise ops at P+n; global attention (P+n) × N' with K/V reuse,
    (P+n) × (P+n) without; windowed attention per ``window_queries``; rel-pos terms always at full size. With a
    drop schedule n varies per block (``block_counts``): a scheduled block's attention side runs at the count
    entering it, its MLP side at the count after its drop.
    """
    _check(window_queries, WINDOW_QUERIES, "window_queries")
    full, p = arch.num_tokens, arch.prefix
    counts = block_counts(arch, kept, schedule)
    if not kv_reuse and arch.window_size is not None and counts[-1][1] != arch.num_patches:
        raise ConfigError("windowed attention needs kv_reuse (a shrinking sequence has no windows)")
    total = full * arch.dim  # position-encoding add
    for b, (before, after) in enumerate(counts):
        n_q = p + before
        queries = window_queries if n_q != full else "all"
        total += attn_side_macs(arch, n_q) + mixing_macs(arch, b, n_q, full if kv_reuse else n_q, queries)
        total += mlp_side_macs(arch, p + after)
    return total


def ref_frame_gmacs(
    arch: ViTArch,
    kind: str = "full",
    *,
    keep_tokens: int | None = None,
    track_radius: int = 1,
    rollout_form: str = "matrix",
    rollout_pool: int = 1,
    kv_reuse: bool = True,
    window_queries: str = "all",
    block0_columns: str = "cut",
    score_fill: str = "auto",
    schedule: Schedule = (),
) -> dict[str, float]:
    """Reference-convention cost of one frame of the given kind, split into backbone and RGTP overhead (GMACs).

    kind: 'dense' (no RGTP at all), 'full' (first/reset frame: dense backbone + full rollout), 'pruned'
    (tracking + selection, keep_tokens = n patches kept), 'pattern' (fixed keep pattern of n patches, no
    tracking). Nearest-kept matching is counted when the pruned scores are filled that way (``score_fill``;
    'auto' = 'computed' with K/V reuse or ``block0_columns='keep'``, else 'nearest_kept'), against the n of the
    cut inside block 0. ``schedule``: a drop schedule (§7.1) starting at block 0, for 'pruned' frames only (full
    frames are dense and pattern frames keep their pattern through every block); it sets n = N − c_1 (keep_tokens
    may then be left out). Its propagation solves (§7.2) count 0 in this convention.

    Returns ``gmacs`` (total), ``backbone_gmacs``, ``overhead_gmacs`` and its split ``overhead_gmacs_rollout``,
    ``overhead_gmacs_tracking``, ``overhead_gmacs_match``, ``overhead_gmacs_propagation``, plus ``kept_tokens``
    (n; N on dense/full frames) and ``kept_tokens_last`` (patches through the last block).
    """
    _check(kind, FRAME_KINDS, "frame kind")
    _check(score_fill, SCORE_FILLS, "score_fill")
    reduced = kind in ("pruned", "pattern")
    schedule = tuple(sorted(schedule)) if kind == "pruned" else ()
    if schedule and keep_tokens is None:
        keep_tokens = arch.num_patches - schedule[0][1]
    if reduced != (keep_tokens is not None):
        raise ConfigError(f"keep_tokens is required for pruned/pattern frames and invalid for {kind!r} frames")
    if reduced and not 1 <= keep_tokens <= arch.num_patches:
        raise ConfigError(f"keep_tokens {keep_tokens} outside 1..{arch.num_patches}")
    counts = block_counts(arch, keep_tokens, schedule)
    backbone = backbone_macs(arch, keep_tokens, kv_reuse=kv_reuse, window_queries=window_queries, schedule=schedule)
    rollout = tracking = match = 0
    if kind != "dense":
        shrinking = reduced and not kv_reuse
        rollout = rollout_macs(
            arch,
            form=rollout_form,
            pool=rollout_pool,
            kept=keep_tokens if shrinking else None,
            block0_columns=block0_columns,
            schedule=schedule if shrinking else (),
        )
    if kind == "pruned":
        tracking = tracking_macs(arch, track_radius)
    if reduced:
        if score_fill == "auto":
            score_fill = "computed" if kv_reuse or block0_columns == "keep" else "nearest_kept"
        if score_fill == "nearest_kept":
            match = match_macs(arch, keep_tokens)
    overhead = rollout + tracking + match
    return {
        "gmacs": (backbone + overhead) / GIGA,
        "backbone_gmacs": backbone / GIGA,
        "overhead_gmacs": overhead / GIGA,
        "overhead_gmacs_rollout": rollout / GIGA,
        "overhead_gmacs_tracking": tracking / GIGA,
        "overhead_gmacs_match": match / GIGA,
        "overhead_gmacs_propagation": 0.0,
        "kept_tokens": float(keep_tokens if reduced else arch.num_patches),
        "kept_tokens_last": float(counts[-1][1]),
    }


def schedule_average(
    per_kind: Mapping[str, Mapping[str, float] | float], counts: Mapping[str, float]
) -> dict[str, float] | float:
    """Frame-weighted mean of per-kind costs: Σ_k count_k · cost_k / Σ_k count_k.

    per_kind: kind → a ``ref_frame_gmacs`` dict (every key is averaged) or a plain number. counts: kind → frame
    count (or weight); kinds with count 0 may be missing from per_kind. Exact, because n per kind is fixed (§8.1).
    """
    if any(c < 0 for c in counts.values()) or sum(counts.values()) <= 0:
        raise ConfigError(f"frame counts must be >= 0 with a positive total, got {dict(counts)}")
    used = {k: c for k, c in counts.items() if c}
    missing = sorted(set(used) - set(per_kind))
    if missing:
        raise ConfigError(f"no per-kind cost for frame kinds {missing}")
    total = sum(used.values())
    values = [per_kind[k] for k in used]
    if all(isinstance(v, Mapping) for v in values):
        keys = set.intersection(*(set(v) for v in values))
        return {key: sum(c * per_kind[k][key] for k, c in used.items()) / total for key in sorted(keys)}
    if any(isinstance(v, Mapping) for v in values):
        raise ConfigError("per_kind mixes dicts and numbers")
    return sum(c * per_kind[k] for k, c in used.items()) / total


def temporal_head_gmacs(temporal: ViTArch | None, num_classes: int, dim: int | None = None) -> float:
    """One view's temporal encoder (``temporal``: grid (1, T) over the step outputs, prefix 1 for its CLS; all of
    it counted, as a dense ViT) plus the linear classifier of ``num_classes`` on its CLS output, in GMACs.

    Without a temporal encoder (``None``) only the classifier is counted, on a ``dim``-wide input.
    """
    width = temporal.dim if temporal is not None else dim
    if width is None:
        raise ConfigError("temporal_head_gmacs needs the classifier's input width (dim) without a temporal encoder")
    macs = backbone_macs(temporal) if temporal is not None else 0
    return (macs + (linear_macs(width, num_classes) if num_classes else 0)) / GIGA


def ref_clip_gmacs(
    spatial_per_kind: Mapping[str, Mapping[str, float]],
    step_counts: Mapping[str, float],
    *,
    temporal: ViTArch,
    num_classes: int,
    views: int = 1,
) -> float:
    """Video classification, per clip (§8.1): views × (Σ spatial steps + temporal encoder + linear classifier).

    spatial_per_kind: ``ref_frame_gmacs`` dicts per step kind; step_counts: steps of each kind in one view;
    temporal: the temporal encoder as a ViTArch (grid (1, T) over the step outputs, prefix 1 for its CLS).
    """
    steps = sum(c * spatial_per_kind[k]["gmacs"] for k, c in step_counts.items() if c)
    return views * (steps + temporal_head_gmacs(temporal, num_classes))


def fills_nearest_kept(kind: str, *, kv_reuse: bool, block0_columns: str = "cut", score_fill: str = "auto") -> bool:
    """Whether a reduced frame (``kind`` 'pruned' or 'pattern') fills its pruned positions' scores by nearest-kept
    matching (§2.7), as the engine does: when asked for explicitly (``score_fill='nearest_kept'``), and where no
    computed score exists (the shrinking sequence, no K/V reuse, with the block-0 column cut);
    ``score_fill='previous'`` replaces it on pruned frames, never on pattern frames.
    """
    _check(block0_columns, BLOCK0_COLUMNS, "block0_columns")
    _check(score_fill, SCORE_FILLS, "score_fill")
    if kind not in ("pruned", "pattern") or (kind == "pruned" and score_fill == "previous"):
        return False
    return score_fill == "nearest_kept" or (not kv_reuse and block0_columns == "cut")


def _check(value: str, allowed: tuple[str, ...], what: str) -> None:
    if value not in allowed:
        raise ConfigError(f"unknown {what} {value!r}; expected one of {', '.join(allowed)}")
