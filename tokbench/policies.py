"""Baseline keep-set policies at RGTP's token budget (anchors.md): random, grid, cls-attn, eventful, boxmask.

Each baseline prunes at the same cut and on the same frames as RGTP (full frame at t = 0, resets every k) and
keeps exactly ``kept_count(N, rho, phi, beta)`` patches, so rows compare like with like. Scores are ``[B, N]``
per patch (higher = keep); ``top_n`` turns them into ascending index sets ``[B, n]``.
"""

from __future__ import annotations

from functools import lru_cache

import torch
import torch.nn.functional as F

from tokbench.selection import gilbert_rank

BASELINES = ("random", "grid", "cls-attn", "eventful", "boxmask")


def top_n(scores: torch.Tensor, n: int) -> torch.Tensor:
    """The ``n`` highest scores of ``[B, N]``, ties by raster index -> ascending LongTensor ``[B, n]``."""
    return torch.sort(scores, dim=1, descending=True, stable=True).indices[:, :n].sort(dim=1).values


def random_indices(batch: int, num_patches: int, n: int, generator: torch.Generator) -> torch.Tensor:
    """``n`` patches drawn uniformly without replacement per sample -> ``[B, n]`` ascending."""
    draws = torch.stack([torch.randperm(num_patches, generator=generator)[:n] for _ in range(batch)])
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
