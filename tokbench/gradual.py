"""Gradual token dropping across blocks and the per-block score propagation (docs/method.md 7.1, 7.2).

A drop schedule ``"0:300,3:50"`` drops 300 patch tokens at block 0's cut and 50 more at block 3's; every
scheduled block prunes after its attention + residual. The first drop ranks every patch by the tracked score with
the one-shot keep set forced on top (score 10); later drops remove the lowest-ranked survivors: last in that order
(``propagation=none``), or lowest by the score propagated through the blocks in between (``supplement``,
``reference``). Pure functions; shapes: B samples, N patches, n tokens in the sequence (prefix excluded). The
schedule's arithmetic without tensors (parsing, tokens per block, solve cost) is in ``tokbench.schedule``.
"""

from __future__ import annotations

import torch

from tokbench.errors import ConfigError
from tokbench.rollout import block_matrices, fuse_heads, gather_tokens, sum_normalize
from tokbench.schedule import PROPAGATIONS

FORCE_KEEP_SCORE = 10.0  # above any sum-normalised score (docs/method.md 7.1)

def first_drop(
    scores: torch.Tensor, force: torch.Tensor, count: int, tie_break: str = "raster"
) -> tuple[torch.Tensor, torch.Tensor]:
    """The first scheduled drop: rank all N patches by ``scores [B, N]`` with the one-shot keep set ``force [B, n]``
    scored 10, drop the lowest ``count``.

    Returns the survivors ``[B, N - count]`` in ascending raster order and their rank in that ordering (0 = best),
    aligned with them. Forced patches tie at 10 and keep the sort's tie order, as in the reference.
    """
    top = max(FORCE_KEEP_SCORE, float(scores.max()) + 1) if scores.numel() else FORCE_KEEP_SCORE
    key = scores.scatter(1, force, top)
    ranked = torch.sort(key, dim=1, descending=True, stable=tie_break == "raster").indices
    survivors, rank = ranked[:, : scores.shape[1] - count].sort(dim=1)
    return survivors, rank


def later_drop(rank: torch.Tensor, count: int, scores: torch.Tensor | None = None) -> torch.Tensor:
    """A later scheduled drop among the ``n`` current patches: positions ``[B, n - count]`` (ascending) of the
    survivors within the current sequence's patches.

    Without ``scores`` the ``count`` last in rank order go (``propagation=none``); with propagated ``scores
    [B, n]`` the ``count`` lowest go, ties by rank.
    """
    order = rank.argsort(dim=1)
    if scores is not None:
        order = order.gather(1, torch.sort(scores.gather(1, order), dim=1, descending=True, stable=True).indices)
    return order[:, : rank.shape[1] - count].sort(dim=1).values


def transition(
    probs: torch.Tensor, seq: torch.Tensor | None, num_prefix: int, form: str, head_fusion: str = "rms"
) -> torch.Tensor:
    """One block's propagation matrix over the sequence's patch tokens: ``[B, n, n]``.

    ``probs [B, H, S, Sk]``: the block's attention of the sequence's ``S = P + n`` queries over ``Sk`` keys (all
    ``N'`` positions with K/V reuse, whose columns outside the sequence ``seq [B, S]`` are left out; ``seq None``:
    ``Sk == S``). ``supplement``: the rollout's residual-normalised matrix (docs/method.md 2.2); ``reference``: the
    raw head-fused attention. Prefix rows and columns are removed in both.
    """
    if form == "supplement":
        mat = block_matrices([probs], head_fusion, seq)[0]
    elif form == "reference":
        mat = fuse_heads(probs, head_fusion)
    else:
        raise ConfigError(f"propagation must be one of {', '.join(PROPAGATIONS)}; got {form!r}")
    if mat.shape[-1] != mat.shape[-2]:
        mat = gather_tokens(mat, seq, dim=2)
    return mat[:, num_prefix:, num_prefix:]


def propagate_step(mat: torch.Tensor, scores: torch.Tensor, form: str) -> tuple[torch.Tensor, int]:
    """Scores at a block's output from those at its input, by a float64 linear solve (never an explicit inverse).

    ``supplement``: solve ``a^T s_l = s_{l-1}`` (so ``s_0 = A_(l,1)^T s_l`` over consecutive blocks);
    ``reference``: solve ``A s_l = s_{l-1}``, then sum-normalise. ``mat [B, n, n]``, ``scores [B, n]`` ->
    ``[B, n]`` float64 and the number of samples whose system was singular or non-finite; those carry their scores
    on unchanged.
    """
    a = mat.to(torch.float64)
    a = a.transpose(1, 2) if form == "supplement" else a
    solved, info = torch.linalg.solve_ex(a, scores.to(torch.float64).unsqueeze(-1))
    solved = solved.squeeze(-1)
    bad = (info != 0) | ~torch.isfinite(solved).all(dim=1)
    if form == "reference":
        solved = sum_normalize(solved)
    out = torch.where(bad[:, None], scores.to(torch.float64), solved)
    return out, int(bad.sum())
