"""Temporal token tracking: move frame t-1's heatmap onto frame t by local matching (docs/method.md section 4).

Every position p of frame t pulls the score of the position p + d of frame t-1, d in ``[-r, r]^2``, whose patch
embedding is most similar to p's (a backward warp). Vectorised over positions; the loop is over the
``(2r+1)^2`` offsets only.
"""

from __future__ import annotations

from functools import lru_cache

import torch
import torch.nn.functional as F

SIMILARITIES = ("dot", "cosine")
FEATURES = ("patch_embed", "block0_keys")  # what is matched: raw patch embeddings, or the cut block's mean keys
BOUNDS = ("mask", "sentinel")


def window_offsets(window: int) -> list[tuple[int, int]]:
    """Offsets ``(dy, dx)`` in scan order (dy outer, dx inner); the zero offset sits at index ``len // 2``."""
    return [(dy, dx) for dy in range(-window, window + 1) for dx in range(-window, window + 1)]


def window_similarity(
    prev_embed: torch.Tensor,
    cur_embed: torch.Tensor,
    grid: tuple[int, int],
    window: int,
    similarity: str = "dot",
) -> tuple[torch.Tensor, torch.Tensor]:
    """Similarity of each frame-t token to the frame-(t-1) tokens in its window.

    Args:
        prev_embed, cur_embed: ``[B, N, C]`` patch embeddings (raster order, ``N = h * w``).
    Returns:
        ``sim [B, D, N]`` with ``D = (2r+1)^2`` (out-of-grid candidates read a zero-padded embedding) and
        ``inside [D, N]`` (bool, the candidate lies on the grid).
    """
    if similarity not in SIMILARITIES:
        raise ValueError(f"unknown similarity {similarity!r}; choose from {', '.join(SIMILARITIES)}")
    h, w = grid
    b, n, c = cur_embed.shape
    if n != h * w or prev_embed.shape != cur_embed.shape:
        raise ValueError(f"embeddings {tuple(prev_embed.shape)}, {tuple(cur_embed.shape)} do not match grid {grid}")
    if similarity == "cosine":
        prev_embed = F.normalize(prev_embed, dim=-1)
        cur_embed = F.normalize(cur_embed, dim=-1)
    r = window
    # channels last and contiguous (patch embeddings arrive as a transposed view): 2-5x faster than [B, C, h, w]
    prev = F.pad(prev_embed.reshape(b, h, w, c), (0, 0, r, r, r, r))
    cur = cur_embed.reshape(b, h, w, c).contiguous()
    sims = [
        torch.linalg.vecdot(cur, prev[:, r + dy : r + dy + h, r + dx : r + dx + w], dim=-1).reshape(b, n)
        for dy, dx in window_offsets(r)
    ]
    inside, _ = _window_geometry(grid, r)
    return torch.stack(sims, dim=1), inside.to(cur.device)


@lru_cache(maxsize=64)
def _window_geometry(grid: tuple[int, int], window: int) -> tuple[torch.Tensor, torch.Tensor]:
    """For every offset and position: ``inside [D, N]`` (the candidate lies on the grid) and ``source [D, N]``
    (the candidate's raster index, 0 where it lies outside)."""
    h, w = grid
    offsets = torch.tensor(window_offsets(window)).view(-1, 2, 1, 1)  # [D, 2, 1, 1]
    ys = torch.arange(h).view(1, h, 1) + offsets[:, 0]
    xs = torch.arange(w).view(1, 1, w) + offsets[:, 1]
    inside = (ys >= 0) & (ys < h) & (xs >= 0) & (xs < w)
    source = torch.where(inside, ys * w + xs, 0)
    return inside.reshape(len(offsets), h * w), source.reshape(len(offsets), h * w)


def track_scores(
    scores: torch.Tensor,
    prev_embed: torch.Tensor,
    cur_embed: torch.Tensor,
    grid: tuple[int, int],
    window: int,
    similarity: str = "dot",
    *,
    bounds: str = "mask",
    min_gain_pct: float | None = None,
) -> torch.Tensor:
    """Track frame t-1's scores to frame t.

    Args:
        scores: ``[B, N]`` heatmap of frame t-1.
        prev_embed, cur_embed: ``[B, N, C]`` patch embeddings (before the position embedding) of frames t-1, t.
        grid: ``(h, w)`` with ``h * w == N``.
        window: radius r >= 0; ``r = 0`` returns ``scores`` unchanged.
        similarity: ``dot`` (reference) or ``cosine``.
        bounds: ``mask`` (default): out-of-grid candidates never win and exact ties go to the zero offset.
            ``sentinel`` (reference): out-of-grid candidates score 0 on the zero-padded grid, any similarity of
            exactly 0.0 becomes -100, ties go to the first offset in scan order, and an out-of-grid winner copies
            ``scores[:, 0]``.
        min_gain_pct: optional θ; keep the zero offset unless the best similarity beats it by at least θ %.
    Returns:
        ``[B, N]`` tracked scores (not renormalised).
    """
    if window < 0:
        raise ValueError(f"tracking window must be >= 0, got {window}")
    if window == 0:
        return scores
    if bounds not in BOUNDS:
        raise ValueError(f"unknown track bounds {bounds!r}; choose from {', '.join(BOUNDS)}")
    sim, inside = window_similarity(prev_embed, cur_embed, grid, window, similarity)
    centre = sim.shape[1] // 2
    if bounds == "mask":
        sim = sim.masked_fill(~inside, float("-inf"))
        best = sim.argmax(dim=1)
        tie = sim[:, centre] >= sim.max(dim=1).values
        best = torch.where(tie, torch.full_like(best, centre), best)
    else:
        sim = sim.masked_fill(sim == 0.0, -100.0)
        best = sim.argmax(dim=1)
    if min_gain_pct is not None:
        base = sim[:, centre]
        base = torch.where(base > 0, base, torch.full_like(base, 0.1))
        gain = sim.max(dim=1).values / base
        best = torch.where(gain < 1 + min_gain_pct / 100, torch.full_like(best, centre), best)
    return _gather_offsets(scores, best, grid, window, inside)


def _gather_offsets(
    scores: torch.Tensor, best: torch.Tensor, grid: tuple[int, int], window: int, inside: torch.Tensor
) -> torch.Tensor:
    """``out[b, p] = scores[b, p + D[best[b, p]]]``; out-of-grid sources read ``scores[b, 0]``."""
    _, source = _window_geometry(grid, window)
    src_idx = source.to(scores.device).gather(0, best)  # [B, N]
    return scores.gather(1, src_idx)


def tracking_macs(num_tokens: int, channels: int, window: int) -> int:
    """Counted cost of tracking, ``N (2r+1)^2 C`` MACs (out-of-grid candidates included), 0 for r = 0."""
    return 0 if window == 0 else num_tokens * (2 * window + 1) ** 2 * channels
