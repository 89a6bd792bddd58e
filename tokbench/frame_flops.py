"""GMACs of the streaming engine's real frames, per frame kind (fvcore convention, attention counted).

fvcore traces one call and freezes the kept count, and drops work that only feeds state; so each frame kind
(full, reset, pruned) is traced once on a real state, with the heatmap returned so the rollout is counted,
and memoised by kind. Tracking is elementwise work fvcore does not count; it is added analytically
(``N (2r+1)^2 C`` MACs) as its own overhead line.
"""

from __future__ import annotations

import copy
from contextlib import contextmanager
from dataclasses import dataclass

import torch

from tokbench.engine import FULL, PRUNED, RESET, StreamingEngine
from tokbench.flops import count_gmacs
from tokbench.tracking import tracking_macs


@dataclass(frozen=True)
class KindCost:
    """Cost of one frame kind in GMACs (fvcore convention)."""

    kind: str
    kept_tokens: int
    gmacs: float  # everything traced, tracking included
    overhead_gmacs_tracking: float
    unsupported: dict[str, int]
    by_operator: dict[str, float]  # fvcore's per-operator GMACs (tracking not included)


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


def frame_costs(engine: StreamingEngine, frame: torch.Tensor) -> dict[str, KindCost]:
    """Trace one frame of each kind that the engine's schedule produces: ``frame [1, 3, H, W]``."""
    modules = [engine.vit.model] + [m for m in vars(engine.task).values() if isinstance(m, torch.nn.Module)]
    with _frozen(modules):
        return _frame_costs(engine, frame)


def _frame_costs(engine: StreamingEngine, frame: torch.Tensor) -> dict[str, KindCost]:
    state = engine.new_state()
    engine.step(frame, state)  # seeds heatmap, embeddings and buffers as a first frame does
    reset_t = engine.config.reset_every if engine.config.reset_every > 0 else None
    kinds = {FULL: 0} if not engine.prunes else {FULL: 0, PRUNED: 1} | ({RESET: reset_t} if reset_t else {})
    costs = {}
    for kind, t in kinds.items():
        seeded = copy.deepcopy(state)
        seeded.t = t
        probe = copy.deepcopy(seeded)
        kept = engine.step(frame, probe).num_kept

        def traced(x, seeded=seeded):
            rec = engine.step(x, copy.copy(seeded))
            extra = [rec.heatmap] if rec.heatmap is not None else []
            return tuple(_flatten(rec.predictions) + extra)

        count = count_gmacs(traced, (frame,))
        n_patches, dim = state.embed.shape[1], state.embed.shape[2]
        track = tracking_macs(n_patches, dim, engine.config.window) / 1e9 if kind == PRUNED and engine.rollout else 0
        costs[kind] = KindCost(kind, kept, count.gmacs + track, track, count.unsupported, count.by_operator)
    return costs
