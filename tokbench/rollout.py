"""Attention rollout: head fusion, residual + row normalisation, matrix and vector forms.

Pure functions on tensors (method.md section 2). Shapes: B batch, H heads, N tokens (prefix included).
Attention rows are queries (output tokens), columns are keys (input tokens).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

HEAD_FUSIONS = ("mean", "rms", "max", "min")


def fuse_heads(attn: torch.Tensor, mode: str = "rms") -> torch.Tensor:
    """Fuse post-softmax attention over heads.

    Args:
        attn: ``[B, H, Nq, Nk]`` attention probabilities.
        mode: ``mean``; ``rms`` (root mean square over heads, the reference default); ``max``; ``min``.
    Returns:
        ``[B, Nq, Nk]``.
    """
    if mode == "mean":
        return attn.mean(dim=1)
    if mode == "rms":
        return attn.square().mean(dim=1).sqrt()
    if mode == "max":
        return attn.amax(dim=1)
    if mode == "min":
        return attn.amin(dim=1)
    raise ValueError(f"unknown head fusion {mode!r}; choose from {', '.join(HEAD_FUSIONS)}")


def residual_normalize(fused: torch.Tensor) -> torch.Tensor:
    """``a = rownorm((fused + I) / 2)``: the per-block rollout matrix (section 2.2).

    Args:
        fused: ``[B, N, N]`` head-fused attention.
    Returns:
        ``[B, N, N]`` with every row summing to 1. Under rms fusion the identity weight ends up below 1/2,
        exactly as in the reference.
    """
    n = fused.shape[-1]
    eye = torch.eye(n, dtype=fused.dtype, device=fused.device)
    a = (fused + eye) / 2
    return a / a.sum(dim=-1, keepdim=True)


def rollout_matrix(attns: Sequence[torch.Tensor], head_fusion: str = "rms") -> torch.Tensor:
    """Matrix-form rollout ``R = a_L ... a_1`` (first block applied first).

    Args:
        attns: L tensors ``[B, H, N, N]``, first block first.
    Returns:
        ``R [B, N, N]``; row i is an output token, column j an input token. Costs ``L N^3`` MACs.
    """
    rollout = None
    for attn in attns:
        a = residual_normalize(fuse_heads(attn, head_fusion))
        rollout = a if rollout is None else a @ rollout
    if rollout is None:
        raise ValueError("rollout needs at least one attention map")
    return rollout


def rollout_vector_from(mats: Sequence[torch.Tensor], start: torch.Tensor) -> torch.Tensor:
    """Vector-form rollout over already residual-normalised matrices (supplement Eq. 2), unnormalised.

    Args:
        mats: L per-block matrices ``[B, N, N]`` (``residual_normalize`` output), first block first.
        start: ``[B, N]`` weights over the last block's output tokens.
    Returns:
        ``[B, N]`` = ``a_1^T ... a_L^T start``. Costs ``L N^2`` MACs.
    """
    v = start
    for a in reversed(mats):
        v = torch.einsum("bij,bi->bj", a, v)
    return v


def rollout_vector(attns: Sequence[torch.Tensor], start: torch.Tensor, head_fusion: str = "rms") -> torch.Tensor:
    """Importance of every input token, ``s_0 = a_1^T ... a_L^T start``, divided by its sum.

    Equal to ``start``-weighted rows of ``rollout_matrix`` (then sum-normalised), at ``O(L N^2)``.

    Args:
        attns: L tensors ``[B, H, N, N]``, first block first.
        start: ``[B, N]`` non-negative weights over output tokens (a one-hot class-token row, or a normalised
            anchor mask).
    Returns:
        ``[B, N]`` summing to 1 per sample (all zeros stay zeros rather than becoming NaN).
    """
    if not attns:
        raise ValueError("rollout needs at least one attention map")
    mats = [residual_normalize(fuse_heads(a, head_fusion)) for a in attns]
    return sum_normalize(rollout_vector_from(mats, start.to(mats[0].dtype)))


def sum_normalize(scores: torch.Tensor) -> torch.Tensor:
    """Divide each row of ``[B, N]`` by its sum; rows summing to 0 are left as zeros (never NaN)."""
    total = scores.sum(dim=-1, keepdim=True)
    return torch.where(total > 0, scores / total.clamp_min(torch.finfo(scores.dtype).tiny), scores)


def cls_start(batch: int, num_tokens: int, *, device=None, dtype=torch.float32) -> torch.Tensor:
    """One-hot start vector on token 0 (the class token): ``[B, N]``."""
    start = torch.zeros(batch, num_tokens, device=device, dtype=dtype)
    start[:, 0] = 1
    return start


def uniform_start(mask: torch.Tensor) -> torch.Tensor:
    """Normalised start vector from a boolean/0-1 mask ``[B, N]``; an empty row becomes uniform."""
    m = mask.to(torch.float32)
    empty = m.sum(dim=-1, keepdim=True) == 0
    m = torch.where(empty, torch.ones_like(m), m)
    return m / m.sum(dim=-1, keepdim=True)


def anchor_mask(
    boxes: torch.Tensor,
    scores: torch.Tensor,
    grid: tuple[int, int],
    input_size: tuple[int, int],
    score_thr: float = 0.1,
    clip_end: str = "g_minus_1",
) -> torch.Tensor:
    """Detection anchors of one frame on the token grid (method.md section 2.5), unnormalised.

    Boxes with ``score > score_thr`` are scaled to grid units (x by ``w / W_in``, y by ``h / H_in``); ``x1, y1``
    are floored and ``x2, y2`` ceiled, then clipped to ``[0, g - 1]`` (reference) or, with ``clip_end="g"``,
    ``x2, y2`` to ``[0, g]`` so boxes touching the far edge keep their last row/column. Cells
    ``[y1, y2) x [x1, x2)`` of every box are marked.

    Args:
        boxes: ``[M, 4]`` xyxy in network-input pixels; scores: ``[M]``.
        grid: ``(h, w)``; input_size: ``(H_in, W_in)`` pixels.
    Returns:
        ``[h * w]`` bool mask (possibly empty).
    """
    h, w = grid
    mask = torch.zeros(h, w, dtype=torch.bool, device=boxes.device)
    sel = boxes[scores > score_thr]
    if sel.numel() == 0:
        return mask.reshape(-1)
    scale = torch.tensor([w / input_size[1], h / input_size[0]] * 2, device=boxes.device)
    cells = sel * scale
    lo, hi = cells[:, :2].floor().long(), cells[:, 2:].ceil().long()
    end = torch.tensor([w, h], device=boxes.device) - (1 if clip_end == "g_minus_1" else 0)
    lo = torch.minimum(lo.clamp_min(0), torch.tensor([w - 1, h - 1], device=boxes.device))
    hi = torch.minimum(hi.clamp_min(0), end)
    ys = torch.arange(h, device=boxes.device).view(1, h, 1)
    xs = torch.arange(w, device=boxes.device).view(1, 1, w)
    inside = (ys >= lo[:, 1, None, None]) & (ys < hi[:, 1, None, None]) & (xs >= lo[:, 0, None, None]) & (
        xs < hi[:, 0, None, None]
    )
    return inside.any(dim=0).reshape(-1)
