"""GMACs of the streaming engine's real frames, per frame kind (fvcore convention, attention counted).

fvcore traces one call and freezes the kept count, and drops work that only feeds state; so each frame kind
(full, reset, pruned) is traced once on a real state, with the heatmap returned so the rollout (and the
nearest-kept matching of a shrinking sequence) is counted, and memoised by kind. Attention is counted with the
SDPA handle or, with ``sdpa_flops='explicit'`` in the engine's configuration, as the explicit matmuls the engine
then runs. Tracking is elementwise work fvcore does not count; it is added analytically (``N (2r+1)^2 C`` MACs)
as its own overhead line. The matching is traced (the engine compares all N patches with the n kept ones:
``N n C_h`` MACs) and also reported on its own line. A drop schedule's later drops are part of the traced step;
its propagation solves (docs/method.md 7.2) are not: fvcore has no handle for ``aten::linalg_solve_ex`` (it stays
in the unsupported-op list), so they are added analytically, ``n^3/3 + n^2`` per solve, as their own line too.
"""

from __future__ import annotations

import copy
import dataclasses
from collections.abc import Collection
from contextlib import contextmanager
from dataclasses import dataclass

import torch

from tokbench.engine import FULL, PRUNED, RESET, StreamingEngine
from tokbench.flops import count_gmacs
from tokbench.flops_ref import GIGA, fills_nearest_kept
from tokbench.schedule import block_tokens, solve_macs
from tokbench.tracking import tracking_macs


@dataclass(frozen=True)
class KindCost:
    """Cost of one frame kind in GMACs (fvcore convention)."""

    kind: str
    kept_tokens: int  # patches after the (first) cut
    gmacs: float  # everything traced, plus the analytic tracking and propagation
    overhead_gmacs_tracking: float
    unsupported: dict[str, int]
    by_operator: dict[str, float]  # fvcore's per-operator GMACs (tracking and propagation not included)
    overhead_gmacs_match: float = 0.0  # nearest-kept matching of pruned scores (traced; part of ``gmacs``)
    sdpa_flops: str = "handle"  # how attention was counted: SDPA handle or explicit matmuls
    overhead_gmacs_propagation: float = 0.0  # a drop schedule's score propagation solves (analytic; in ``gmacs``)
    kept_tokens_last: int | None = None  # patches through the last block (None: ``kept_tokens``)

    @property
    def traced_gmacs(self) -> float:
        """What fvcore counted in the traced step: ``gmacs`` without the analytic tracking and propagation."""
        return self.gmacs - self.overhead_gmacs_tracking - self.overhead_gmacs_propagation


def _flatten(predictions) -> list[torch.Tensor]:
    if isinstance(predictions, torch.Tensor):
        return [predictions]
    if isinstance(predictions, dict):
        return [v for v in predictions.values() if isinstance(v, torch.Tensor)]
    return [t for p in predictions for t in _flatten(p)]


@contextmanager
def _frozen(modules: list[torch.nn.Module]):
    """Parameters become trace constants, which TorchScript accepts only without ``requires_grad``."""
    params = [p for m in modules for p in m.parameters() if p.requires_grad]
    for p in params:
        p.requires_grad_(False)
    try:
        yield
    finally:
        for p in params:
            p.requires_grad_(True)


def frame_costs(
    engine: StreamingEngine, frame: torch.Tensor, *, heatmap: bool = True, kinds: Collection[str] | None = None
) -> dict[str, KindCost]:
    """Trace one frame of each kind that the engine's schedule produces (or of those of ``kinds``):
    ``frame [1, 3, H, W]``.

    ``heatmap=False`` leaves the frame's heatmap out of the traced outputs, so the rollout and the nearest-kept
    matching (work that only feeds the next frame) are not counted.
    """
    modules = [engine.vit.model] + [m for m in vars(engine.task).values() if isinstance(m, torch.nn.Module)]
    with _frozen(modules), engine.eager():
        return _frame_costs(engine, frame, heatmap, kinds)


def _frame_costs(
    engine: StreamingEngine, frame: torch.Tensor, heatmap: bool = True, only: Collection[str] | None = None
) -> dict[str, KindCost]:
    state = engine.new_state()
    engine.step(frame, state)  # seeds heatmap, embeddings and buffers as a first frame does
    reset_t = engine.config.reset_every if engine.config.reset_every > 0 else None
    kinds = {FULL: 0} if not engine.prunes else {FULL: 0, PRUNED: 1} | ({RESET: reset_t} if reset_t else {})
    kinds = {k: t for k, t in kinds.items() if only is None or k in only}
    sdpa = getattr(engine.config, "sdpa_flops", "handle")
    costs = {}
    for kind, t in kinds.items():
        # a frame that runs every token computes what any engine of the same full signature computes
        full = (engine.full_signature(), heatmap, tuple(frame.shape)) if engine.runs_full(t) else None
        if full in _FULL_RUN:
            costs[kind] = dataclasses.replace(_FULL_RUN[full], kind=kind)
            continue
        seeded = copy.deepcopy(state)
        seeded.t = t
        probe = engine.step(frame, copy.deepcopy(seeded))
        kept = probe.num_kept
        last = probe.block_tokens[-1] if probe.block_tokens else kept

        def traced(x, seeded=seeded):
            rec = engine.step(x, copy.copy(seeded))
            extra = [rec.heatmap] if rec.heatmap is not None and heatmap else []
            return tuple(_flatten(rec.predictions) + extra)

        count = count_gmacs(traced, (frame,), sdpa=sdpa)
        n_patches = state.embed.shape[1]
        track = tracking_gmacs(engine, n_patches) if kind == PRUNED else 0.0
        match = match_gmacs(engine, kind, n_patches, kept) if heatmap else 0.0
        solves = propagation_gmacs(engine, kind, n_patches)
        costs[kind] = KindCost(kind, kept, count.gmacs + track + solves, track, count.unsupported, count.by_operator,
                               match, sdpa, solves, last)
        if full is not None:
            _FULL_RUN[full] = costs[kind]
    return costs


_FULL_RUN: dict[tuple, KindCost] = {}  # frames that run every token, by (full signature, heatmap, input shape)


def tracking_gmacs(engine: StreamingEngine, num_patches: int) -> float:
    """Tracking on a pruned frame, ``N (2r+1)^2 C`` in GMACs (C_h for ``track_features='block0_keys'``)."""
    if not engine.rollout:
        return 0.0
    keys = getattr(engine.config, "track_features", "patch_embed") == "block0_keys"
    dim = engine.vit.head_dim if keys else engine.vit.embed_dim
    return tracking_macs(num_patches, dim, engine.config.window) / GIGA


def match_gmacs(engine: StreamingEngine, kind: str, num_patches: int, kept: int) -> float:
    """Nearest-kept matching as the engine runs it: all N patches against the n kept ones, ``N n C_h`` in GMACs
    (``C`` on raw patch embeddings when the cut is before block 0); 0 where scores are computed (docs/method.md 2.7)."""
    if not engine.rollout:
        return 0.0
    reduced = PRUNED if kind == PRUNED else "pattern" if kind == RESET and engine.reset_mode == "pattern" else None
    if reduced is None or not fills_nearest_kept(reduced, kv_reuse=engine.kv_reuse,
                                                 block0_columns=engine.config.block0_columns,
                                                 score_fill=engine.config.pruned_score_fill):
        return 0.0
    dim = engine.vit.head_dim if engine.config.cut == "block0" else engine.vit.embed_dim
    return num_patches * kept * dim / GIGA


def propagation_gmacs(engine: StreamingEngine, kind: str, num_patches: int) -> float:
    """The score propagation of a pruned frame under a drop schedule (docs/method.md 7.2), in GMACs: one float64
    ``n x n`` solve, ``solve_macs(n)``, at every global block strictly after the first cut up to and including the
    last scheduled block, n = the patch tokens entering that block; windowed blocks solve nothing (identity). 0
    with ``propagation=none``, on other frame kinds, and without a later drop."""
    schedule = engine.resolved.schedule
    if kind != PRUNED or engine.propagation == "none" or len(schedule) < 2:
        return 0.0
    entering = [num_patches] + block_tokens(num_patches, engine.vit.depth, schedule)
    first, last = schedule[0][0], schedule[-1][0]
    return sum(solve_macs(entering[b]) for b in range(first + 1, last + 1) if engine.vit.is_global(b)) / GIGA
