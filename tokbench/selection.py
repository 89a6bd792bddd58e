"""Keep-set selection: RGTP's foreground/background strides, Gilbert ordering, reset patterns (docs/method.md 3, 5).

All functions are pure. Indices are raster patch indices ``j = y * w + x`` on an ``h x w`` grid, prefix tokens
excluded. Kept sets come back sorted ascending, shape ``[B, K]`` with ``K`` independent of the data.
"""

from __future__ import annotations

import math
from functools import lru_cache

import torch

from tokbench.errors import ConfigError

ORDERS = ("rank", "gilbert")
TIE_BREAKS = ("raster", "unstable")
RESET_PATTERNS = ("1in2", "1in4", "1in9")


def check_ratios(keep_ratio: float, fg_ratio: float = 1.0, bg_ratio: float = 0.0) -> None:
    """Reject rho, phi outside (0, 1] and beta outside [0, 1]."""
    if not 0 < keep_ratio <= 1:
        raise ConfigError(f"keep ratio must be in (0, 1], got {keep_ratio}")
    if not 0 < fg_ratio <= 1:
        raise ConfigError(f"foreground sample ratio must be in (0, 1], got {fg_ratio}")
    if not 0 <= bg_ratio <= 1:
        raise ConfigError(f"background sample ratio must be in [0, 1], got {bg_ratio}")


def strides(fg_ratio: float, bg_ratio: float) -> tuple[int, int]:
    """Foreground and background strides ``round(1/phi)``, ``round(1/beta)`` (Python's half-to-even round)."""
    return round(1 / fg_ratio), (round(1 / bg_ratio) if bg_ratio > 0 else 0)


def kept_count(num_tokens: int, keep_ratio: float, fg_ratio: float = 1.0, bg_ratio: float = 0.0) -> int:
    """Patches kept on a pruned frame: ``ceil(n_fg / s_f) + [beta > 0] ceil((N - n_fg) / s_b)``."""
    check_ratios(keep_ratio, fg_ratio, bg_ratio)
    n_fg = round(keep_ratio * num_tokens)
    s_f, s_b = strides(fg_ratio, bg_ratio)
    n = math.ceil(n_fg / s_f) + (math.ceil((num_tokens - n_fg) / s_b) if s_b else 0)
    if n == 0:
        raise ConfigError(
            f"keep ratio {keep_ratio} with fg/bg ratios {fg_ratio}/{bg_ratio} keeps no token of {num_tokens}"
        )
    return n


@lru_cache(maxsize=32)
def _gilbert_path(width: int, height: int) -> tuple[tuple[int, int], ...]:
    """Cells ``(x, y)`` of a ``width x height`` grid in generalised Hilbert ("gilbert2d") curve order."""
    path: list[tuple[int, int]] = []

    def sign(v: int) -> int:
        return (v > 0) - (v < 0)

    def walk(x: int, y: int, ax: int, ay: int, bx: int, by: int) -> None:
        w, h = abs(ax + ay), abs(bx + by)
        dax, day, dbx, dby = sign(ax), sign(ay), sign(bx), sign(by)
        if h == 1 or w == 1:  # a single row or column: walk straight along it
            sx, sy, steps = (dax, day, w) if h == 1 else (dbx, dby, h)
            for i in range(steps):
                path.append((x + i * sx, y + i * sy))
            return
        ax2, ay2, bx2, by2 = ax // 2, ay // 2, bx // 2, by // 2
        w2, h2 = abs(ax2 + ay2), abs(bx2 + by2)
        if 2 * w > 3 * h:  # long along a: split it in two halves
            if w2 % 2 and w > 2:
                ax2, ay2 = ax2 + dax, ay2 + day
            walk(x, y, ax2, ay2, bx, by)
            walk(x + ax2, y + ay2, ax - ax2, ay - ay2, bx, by)
            return
        if h2 % 2 and h > 2:
            bx2, by2 = bx2 + dbx, by2 + dby
        walk(x, y, bx2, by2, ax2, ay2)
        walk(x + bx2, y + by2, ax, ay, bx - bx2, by - by2)
        walk(x + (ax - dax) + (bx2 - dbx), y + (ay - day) + (by2 - dby), -bx2, -by2, -(ax - ax2), -(ay - ay2))

    if width >= height:
        walk(0, 0, width, 0, 0, height)
    else:
        walk(0, 0, 0, height, width, 0)
    return tuple(path)


def gilbert_rank(grid: tuple[int, int]) -> torch.Tensor:
    """Curve position of every raster patch, ``[N]`` (a permutation of ``0..N-1``).

    Raster patch ``(row, x)`` gets the curve index of ``(x, h - 1 - row)``: the curve starts bottom-left, as in
    the reference.
    """
    h, w = grid
    rank = torch.empty(h * w, dtype=torch.long)
    for i, (x, y) in enumerate(_gilbert_path(w, h)):
        rank[(h - 1 - y) * w + x] = i
    return rank


def _order_by(idx: torch.Tensor, key: torch.Tensor) -> torch.Tensor:
    """Reorder ``idx [B, M]`` by ``key[idx]`` ascending."""
    return idx.gather(1, key[idx].argsort(dim=1, stable=True))


def rollout_keep_indices(
    scores: torch.Tensor,
    grid: tuple[int, int],
    keep_ratio: float,
    fg_ratio: float = 1.0,
    bg_ratio: float = 0.0,
    order: str = "rank",
    *,
    tie_break: str = "raster",
) -> torch.Tensor:
    """RGTP keep set from (tracked) scores.

    The top ``round(keep_ratio * N)`` patches form the foreground, decimated to every ``round(1/fg_ratio)``-th by
    rank (or along the Gilbert curve with ``order="gilbert"``); the rest, in raster (or curve) order, is the
    background, decimated to every ``round(1/bg_ratio)``-th (none when ``bg_ratio == 0``).

    Args:
        scores: ``[B, N]`` importance per patch.
        grid: ``(h, w)``, ``h * w == N``.
        tie_break: ``raster`` (stable sort: equal scores rank by raster index) or ``unstable`` (the library
            default sort, as in the reference).
    Returns:
        LongTensor ``[B, K]`` of kept patch indices, unique and ascending; ``K = kept_count(...)``.
    """
    if order not in ORDERS:
        raise ConfigError(f"unknown sampling order {order!r}; choose from {', '.join(ORDERS)}")
    if tie_break not in TIE_BREAKS:
        raise ConfigError(f"unknown tie break {tie_break!r}; choose from {', '.join(TIE_BREAKS)}")
    n_tokens = int(scores.shape[-1])
    if grid[0] * grid[1] != n_tokens:
        raise ConfigError(f"grid {grid} does not match {n_tokens} scores")
    kept_count(n_tokens, keep_ratio, fg_ratio, bg_ratio)  # validates
    n_fg = round(keep_ratio * n_tokens)
    s_f, s_b = strides(fg_ratio, bg_ratio)
    ranked = torch.sort(scores, dim=-1, descending=True, stable=tie_break == "raster").indices
    fg, bg = ranked[:, :n_fg], ranked[:, n_fg:]
    if order == "gilbert":
        curve = gilbert_rank(grid).to(scores.device)
        fg, bg = _order_by(fg, curve), _order_by(bg, curve)
    else:
        bg = bg.sort(dim=1).values
    parts = [fg[:, ::s_f]]
    if s_b:
        parts.append(bg[:, ::s_b])
    return torch.cat(parts, dim=1).sort(dim=1).values


def reset_pattern_indices(grid: tuple[int, int], pattern: str) -> torch.Tensor:
    """Fixed keep pattern of a classification reset frame, LongTensor ``[K]`` ascending.

    ``1in2``: ``(row + col)`` even (checkerboard, ``ceil(hw/2)``); ``1in4``: even rows and even columns
    (``ceil(h/2) ceil(w/2)``); ``1in9``: rows and columns divisible by 3 (``ceil(h/3) ceil(w/3)``).
    """
    h, w = grid
    if h < 1 or w < 1:
        raise ConfigError(f"empty grid {grid}")
    row = torch.arange(h).view(h, 1).expand(h, w)
    col = torch.arange(w).view(1, w).expand(h, w)
    if pattern == "1in2":
        keep = (row + col) % 2 == 0
    elif pattern == "1in4":
        keep = (row % 2 == 0) & (col % 2 == 0)
    elif pattern == "1in9":
        keep = (row % 3 == 0) & (col % 3 == 0)
    else:
        raise ConfigError(f"unknown reset pattern {pattern!r}; choose from {', '.join(RESET_PATTERNS)}")
    return keep.reshape(-1).nonzero().squeeze(1)
