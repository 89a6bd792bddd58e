"""Pruning policies as objects in one registry: RGTP, dense, and the baselines at RGTP's budget (anchors.md).

Each baseline prunes at the same cut and on the same frames as RGTP (full frame at t = 0, resets every k) and
keeps exactly ``kept_count(N, rho, phi, beta)`` patches, so rows compare like with like. Scores are ``[B, N]``
per patch (higher = keep); ``top_n`` turns them into ascending index sets ``[B, n]``. A ``Policy`` says what it
needs from the model, what it carries from frame to frame, how it chooses, where it applies and how it is drawn;
the engine, the configuration, the ablation grid and the report ask ``POLICIES`` instead of comparing names.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from enum import Enum
from functools import lru_cache

import torch
import torch.nn.functional as F

from tokbench.errors import ConfigError, unknown_name
from tokbench.rollout import gather_tokens, scatter_tokens
from tokbench.selection import gilbert_rank


def top_n(scores: torch.Tensor, n: int) -> torch.Tensor:
    """The ``n`` highest scores of ``[B, N]``, ties by raster index -> ascending LongTensor ``[B, n]``."""
    return torch.sort(scores, dim=1, descending=True, stable=True).indices[:, :n].sort(dim=1).values


def random_indices(batch: int, num_patches: int, n: int,
                   generators: torch.Generator | Sequence[torch.Generator]) -> torch.Tensor:
    """``n`` patches drawn uniformly without replacement per sample -> ``[B, n]`` ascending.

    ``generators``: one per sample (sample b draws from its own, so a clip's draws do not depend on its batch
    partners), or a single one every sample draws from in turn.
    """
    if isinstance(generators, torch.Generator):
        generators = [generators]
    if len(generators) not in (1, batch):
        raise ValueError(f"{len(generators)} generators for a batch of {batch}")
    gens = generators if len(generators) == batch else [generators[0]] * batch
    draws = torch.stack([torch.randperm(num_patches, generator=g)[:n] for g in gens])
    return draws.sort(dim=1).values


@lru_cache(maxsize=64)
def grid_indices(grid: tuple[int, int], n: int) -> torch.Tensor:
    """``n`` patches evenly spaced along the Gilbert curve (spatially uniform for any n) -> ``[n]`` ascending.

    Memoised: callers must not modify the returned tensor.
    """
    rank = gilbert_rank(grid)
    num = rank.numel()
    positions = ((torch.arange(n, dtype=torch.float64) + 0.5) * num / n).long()
    curve_to_raster = torch.empty_like(rank)
    curve_to_raster[rank] = torch.arange(num)
    return curve_to_raster[positions].sort().values


def cls_attn_scores(probs: torch.Tensor, num_prefix: int, has_class_token: bool) -> torch.Tensor:
    """EViT-style scores from block 0's attention ``[B, H, S, S]`` (all tokens present) -> ``[B, N]``.

    With a class token: the class token's attention to each patch, averaged over heads; without one: the mean
    attention each patch receives.
    """
    if has_class_token:
        return probs[:, :, 0, num_prefix:].mean(dim=1)
    return probs[:, :, :, num_prefix:].mean(dim=(1, 2))


def eventful_scores(z: torch.Tensor, reference: torch.Tensor) -> torch.Tensor:
    """How far each patch embedding moved since it was last computed: ``z, reference [B, N, C]`` -> ``[B, N]``."""
    return (z - reference).norm(dim=-1)


def boxmask_scores(anchors: torch.Tensor, grid: tuple[int, int], n: int) -> torch.Tensor:
    """MaskVD-style scores from the previous frame's box mask ``anchors [B, N]`` (> 0 inside a box) -> ``[B, N]``.

    Patches inside a box come first; a budget larger than the mask is topped up by the one-patch ring around the
    boxes, then by the evenly spaced grid; a smaller budget cuts the mask in raster order.
    """
    h, w = grid
    inside = (anchors > 0).float()
    ring = F.max_pool2d(inside.view(-1, 1, h, w), 3, stride=1, padding=1).view_as(inside)
    spread = torch.zeros(h * w, device=anchors.device)
    spread[grid_indices(grid, n).to(anchors.device)] = 1.0
    return 4 * inside + 2 * ring + spread


# -- the registry ---------------------------------------------------------------------------------------------


class Need(str, Enum):
    """What a policy needs from the model beyond the forward pass."""

    PROBS = "probs"  # the cut block's attention probabilities
    BOXES = "boxes"  # the task's box mask of every frame's predictions (detection)
    ROLLOUT = "rollout"  # the attention rollout of every frame (probabilities of every global block)


@dataclass(frozen=True)
class Cut:
    """What a baseline reads when it chooses the keep set of a pruned frame."""

    z: torch.Tensor  # this frame's patch embeddings [B, N, C]
    grid: tuple[int, int]
    n: int  # the budget: patches to keep
    memory: torch.Tensor | None  # the policy's per-clip state after the previous frame (``Policy.remember``)
    rngs: tuple[torch.Generator, ...]  # the random draws: one generator per sample, or one shared by the batch
    probs: torch.Tensor | None  # the cut block's attention [B, H, N', N'] (``Need.PROBS``), else None
    num_prefix: int
    has_class_token: bool


Select = Callable[[Cut], torch.Tensor]
Remember = Callable[[torch.Tensor | None, torch.Tensor, torch.Tensor | None, torch.Tensor | None], torch.Tensor]


@dataclass(frozen=True)
class Policy:
    """One pruning policy.

    ``select`` returns a baseline's keep set ``[B, n]`` ascending (``None``: dense keeps everything, RGTP selects
    from its tracked rollout in the engine). ``remember(memory, z, keep, boxes)`` is the per-clip state carried to
    the next frame, from this frame's patch embeddings ``z [B, N, C]``, kept patches ``keep [B, n]`` (None = all)
    and box mask ``boxes [B, N]`` (``Need.BOXES``); it may update ``memory`` in place.
    """

    name: str
    color: str
    marker: str
    select: Select | None = None
    remember: Remember | None = None
    needs: frozenset[Need] = frozenset()
    tasks: frozenset[str] | None = None  # model output kinds it applies to; None: every kind
    seeds: int = 1  # rows per configuration in an ablation, seeds seed .. seed + seeds - 1
    kv_reuse: bool = False  # K/V reuse on where the configuration says auto, for any task
    prunes: bool = True

    @property
    def rollout(self) -> bool:
        """Whether the policy rolls attention out (RGTP)."""
        return Need.ROLLOUT in self.needs

    def applies_to(self, kind: str) -> bool:
        """Whether the policy can run on a model whose output kind is ``kind`` (detect, action, ...)."""
        return self.tasks is None or kind in self.tasks


def by_scores(scores: Callable[[Cut], torch.Tensor]) -> Select:
    """The keep set of the ``n`` highest ``scores(cut) [B, N]``."""
    return lambda cut: top_n(scores(cut), cut.n)


def _random(cut: Cut) -> torch.Tensor:
    return random_indices(cut.z.shape[0], cut.z.shape[1], cut.n, cut.rngs).to(cut.z.device)


def _grid(cut: Cut) -> torch.Tensor:
    return grid_indices(cut.grid, cut.n).to(cut.z.device).expand(cut.z.shape[0], -1)


def _reference(memory: torch.Tensor | None, z: torch.Tensor, keep: torch.Tensor | None, boxes) -> torch.Tensor:
    """Eventful: each patch's embedding when it was last computed ``[B, N, C]``."""
    return z.clone() if keep is None else scatter_tokens(memory, keep, gather_tokens(z, keep))


def _boxes(memory, z, keep, boxes: torch.Tensor | None) -> torch.Tensor:
    """Boxmask: the previous frame's box mask ``[B, N]``."""
    return boxes


POLICIES: dict[str, Policy] = {p.name: p for p in (
    Policy("rgtp", "tab:blue", "o", needs=frozenset({Need.ROLLOUT})),
    Policy("dense", "black", "*", prunes=False),
    Policy("random", "tab:gray", "x", select=_random, seeds=3),
    Policy("grid", "tab:olive", "s", select=_grid),
    Policy("cls-attn", "tab:purple", "^", needs=frozenset({Need.PROBS}),
           select=by_scores(lambda cut: cls_attn_scores(cut.probs, cut.num_prefix, cut.has_class_token))),
    Policy("eventful", "tab:green", "D", select=by_scores(lambda cut: eventful_scores(cut.z, cut.memory)),
           remember=_reference, kv_reuse=True),
    Policy("boxmask", "tab:red", "v", needs=frozenset({Need.BOXES}), tasks=frozenset({"detect"}),
           select=by_scores(lambda cut: boxmask_scores(cut.memory, cut.grid, cut.n)), remember=_boxes),
)}
BASELINES = tuple(name for name, p in POLICIES.items() if p.select is not None)


def policy(name: str) -> Policy:
    """The registered policy ``name``; a one-line ``ConfigError`` (with close matches) for an unknown one."""
    if name not in POLICIES:
        raise ConfigError(str(unknown_name("policy", name, list(POLICIES))))
    return POLICIES[name]
