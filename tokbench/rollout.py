"""Attention rollout: head fusion, residual + row normalisation, matrix and vector forms.

Pure functions on tensors (docs/method.md section 2), including the streaming variants the engine calls with its
buffers. Shapes: B batch, H heads, N tokens (prefix included). Attention rows are queries (output tokens), columns
are keys (input tokens).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F

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
    if mode == "rms":  # one pass per head, no [B, H, Nq, Nk] temporary: 20x faster than vector_norm on CPU
        fused = attn[:, 0] * attn[:, 0]
        for h in range(1, attn.shape[1]):
            fused.addcmul_(attn[:, h], attn[:, h])
        return fused.sqrt_().mul_(attn.shape[1] ** -0.5)
    if mode == "max":
        return attn.amax(dim=1)
    if mode == "min":
        return attn.amin(dim=1)
    raise ValueError(f"unknown head fusion {mode!r}; choose from {', '.join(HEAD_FUSIONS)}")


def residual_normalize(fused: torch.Tensor, own: torch.Tensor | None = None) -> torch.Tensor:
    """``a = rownorm((fused + I) / 2)``: the per-block rollout matrix (section 2.2), row by row.

    The ``/ 2`` cancels in the row normalisation (exactly, in floating point too), so it is not applied.

    Args:
        fused: ``[..., S, Nk]`` head-fused attention rows; square (``S == Nk``) unless ``own`` is given.
        own: optional ``[B, S]`` column of each row's own token (the rows of a pruned frame), broadcast over
            any leading dimensions before ``B``; ``None`` puts the identity on the diagonal.
    Returns:
        A new tensor shaped like ``fused`` with every row summing to 1. Under rms fusion the identity weight ends
        up below 1/2, exactly as in the reference.
    """
    return _residual_normalize_(fused.clone(), own)


def _residual_normalize_(a: torch.Tensor, own: torch.Tensor | None) -> torch.Tensor:
    if own is None:
        a.diagonal(dim1=-2, dim2=-1).add_(1)
    else:
        a.scatter_add_(-1, own.unsqueeze(-1).expand(*a.shape[:-1], 1), torch.ones_like(a[..., :1]))
    return a.div_(a.sum(dim=-1, keepdim=True))


def block_matrices(
    probs: Sequence[torch.Tensor],
    head_fusion: str = "rms",
    own: torch.Tensor | Sequence[torch.Tensor | None] | None = None,
) -> list[torch.Tensor]:
    """``residual_normalize(fuse_heads(p))`` for every block, blocks of equal shape in one batched pass.

    Args:
        probs: L attention maps ``[B, H, S_l, Nk_l]``.
        own: ``[B, S]`` column of each row's own token, used for the non-square maps (kept query rows over
            all keys); square maps get the identity on the diagonal. One per block where blocks ran different
            sequences (a drop schedule); blocks of one shape share it.
    Returns:
        L matrices ``[B, S_l, Nk_l]``, rows summing to 1.
    """
    groups: dict[tuple[int, ...], list[int]] = {}
    for i, p in enumerate(probs):
        groups.setdefault(tuple(p.shape), []).append(i)
    mats: list[torch.Tensor] = [probs[0]] * len(probs)
    for (b, h, s, nk), members in groups.items():
        stacked = probs[members[0]] if len(members) == 1 else torch.stack([probs[i] for i in members])
        stacked = stacked.view(-1, h, s, nk)
        fused = fuse_heads(stacked, head_fusion).view(len(members), b, s, nk)
        rows = own[members[0]] if isinstance(own, (list, tuple)) else own
        fused = _residual_normalize_(fused, None if s == nk else rows)
        for j, i in enumerate(members):
            mats[i] = fused[j]
    return mats


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
    v = start.unsqueeze(1)
    for a in reversed(mats):
        v = torch.bmm(v, a)
    return v.squeeze(1)


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
    """Detection anchors of one frame on the token grid (docs/method.md section 2.5), unnormalised.

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
    sel = boxes[scores > score_thr]
    if sel.numel() == 0:
        return torch.zeros(h * w, dtype=torch.bool, device=boxes.device)
    far = 1 if clip_end == "g_minus_1" else 0
    sx, sy = w / input_size[1], h / input_size[0]
    x1 = (sel[:, 0] * sx).floor().clamp(0, w - 1)
    y1 = (sel[:, 1] * sy).floor().clamp(0, h - 1)
    x2 = (sel[:, 2] * sx).ceil().clamp(0, w - far)
    y2 = (sel[:, 3] * sy).ceil().clamp(0, h - far)
    ys = torch.arange(h, device=boxes.device, dtype=sel.dtype)
    xs = torch.arange(w, device=boxes.device, dtype=sel.dtype)
    rows = (ys >= y1[:, None]) & (ys < y2[:, None])  # [M, h]
    cols = (xs >= x1[:, None]) & (xs < x2[:, None])  # [M, w]
    return (rows[:, :, None] & cols[:, None, :]).any(dim=0).reshape(-1)


# -- p x p cell pooling (section 2.6) ---------------------------------------------------------------------------


def cell_index(grid: tuple[int, int], pool: int, num_prefix: int, device=None) -> torch.Tensor:
    """The cell of every token ``[P + h w]``: prefix tokens are their own cells ``0..P-1``; patch ``(y, x)`` is
    in cell ``P + (y // p) * (w // p) + x // p``."""
    h, w = grid
    if pool < 1 or h % pool or w % pool:
        raise ValueError(f"rollout_pool {pool} must divide the {h}x{w} grid")
    ys = torch.arange(h, device=device)[:, None] // pool
    xs = torch.arange(w, device=device)[None, :] // pool
    patches = (num_prefix + ys * (w // pool) + xs).reshape(-1)
    return torch.cat([torch.arange(num_prefix, device=device), patches])


def pool_attention(
    fused: torch.Tensor, grid: tuple[int, int], pool: int, num_prefix: int, rows: torch.Tensor | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Pool head-fused attention into cells: keys summed, query rows averaged over the queries present.

    Args:
        fused: ``[B, S, N']`` fused rows of queries ``rows`` over all ``N' = P + h w`` keys.
        rows: ``[B, S]`` token indices of the rows (a pruned frame's kept queries); ``None``: all ``N'`` in order.
    Returns:
        ``[B, M, M]`` pooled rows (``M = P + (h / p)(w / p)``; zero where a cell has no query) and ``[B, M]``
        bool: which cells had a query. Under mean fusion the filled rows sum to 1.
    """
    b, s, _ = fused.shape
    cells = cell_index(grid, pool, num_prefix, fused.device)
    m = int(cells[-1]) + 1
    by_key = fused.new_zeros(b, s, m).index_add_(2, cells, fused)
    query_cells = cells.expand(b, -1) if rows is None else cells[rows]  # [B, S]
    sums = fused.new_zeros(b, m, m).scatter_add_(1, query_cells[..., None].expand(-1, -1, m), by_key)
    counts = fused.new_zeros(b, m).scatter_add_(1, query_cells, torch.ones_like(query_cells, dtype=fused.dtype))
    return sums / counts.clamp_min(1)[..., None], counts > 0


def pool_start(start: torch.Tensor, grid: tuple[int, int], pool: int, num_prefix: int) -> torch.Tensor:
    """Start weights ``[B, P + h w]`` -> ``[B, M]``: a cell is an anchor iff at least half of its ``p^2`` patches
    have weight; prefix weights stay; normalised to sum 1 (an empty result stays all zero)."""
    b, h, w = start.shape[0], *grid
    anchors = (start[:, num_prefix:] > 0).to(start.dtype).view(b, 1, h, w)
    cells = (F.avg_pool2d(anchors, pool) >= 0.5).to(start.dtype).flatten(1)
    return sum_normalize(torch.cat([start[:, :num_prefix], cells], dim=1))


def unpool_scores(scores: torch.Tensor, grid: tuple[int, int], pool: int, num_prefix: int) -> torch.Tensor:
    """Cell scores ``[B, M]`` -> token scores ``[B, P + h w]``: patch cells upsampled bilinearly
    (``align_corners=False``), prefix scores unchanged."""
    b, h, w = scores.shape[0], *grid
    cells = scores[:, num_prefix:].view(b, 1, h // pool, w // pool)
    patches = F.interpolate(cells, size=(h, w), mode="bilinear", align_corners=False).flatten(1)
    return torch.cat([scores[:, :num_prefix], patches], dim=1)


# -- token indexing ---------------------------------------------------------------------------------------------


def gather_tokens(x: torch.Tensor, idx: torch.Tensor, dim: int = 1) -> torch.Tensor:
    """Pick positions ``idx [B, K]`` along ``dim`` of ``x [B, ..., S, ...]`` (same index for every head/channel)."""
    shape = list(x.shape)
    shape[dim] = idx.shape[1]
    view = [idx.shape[0]] + [1] * (x.ndim - 1)
    view[dim] = idx.shape[1]
    return x.gather(dim, idx.view(view).expand(shape))


def scatter_tokens(buf: torch.Tensor, idx: torch.Tensor, src: torch.Tensor, dim: int = 1) -> torch.Tensor:
    """In-place ``buf[b, ..., idx[b, j], ...] = src[b, ..., j, ...]``; returns ``buf``."""
    view = [idx.shape[0]] + [1] * (buf.ndim - 1)
    view[dim] = idx.shape[1]
    return buf.scatter_(dim, idx.view(view).expand(src.shape), src)


# -- streaming rollout (sections 2.6, 2.7): the engine keeps the buffers, these do the math ---------------------


def propagate(mats: Sequence[torch.Tensor], start: torch.Tensor, form: str = "vector") -> torch.Tensor:
    """``a_1^T ... a_L^T start`` in vector form, or through the rollout matrix ``a_L ... a_1`` (from I) in matrix
    form: ``mats`` L matrices ``[B, S, S]`` first block first, ``start [B, S]`` -> ``[B, S]``, unnormalised."""
    if form == "vector":
        return rollout_vector_from(mats, start)
    rollout = torch.eye(mats[0].shape[-1], dtype=start.dtype, device=start.device).expand_as(mats[0])
    for a in mats:
        rollout = a @ rollout
    return torch.einsum("bij,bi->bj", rollout, start)


def pooled_rows(
    probs: torch.Tensor,
    previous: torch.Tensor | None,
    grid: tuple[int, int],
    pool: int,
    num_prefix: int,
    head_fusion: str = "rms",
    queries: torch.Tensor | None = None,
) -> torch.Tensor:
    """One block's cell-level rollout matrix (section 2.6): fused rows pooled into cells, identity, row-normalised.

    Args:
        probs: ``[B, H, S, N']`` attention of queries ``queries [B, S]`` over all ``N' = P + h w`` keys;
            ``queries None``: all ``N'`` queries in order.
        previous: ``[B, M, M]`` the block's rows from earlier frames, kept for cells without a query
            (unused when ``queries`` is None).
    Returns:
        ``[B, M, M]``, ``M = P + (h / p)(w / p)``.
    """
    pooled, filled = pool_attention(fuse_heads(probs, head_fusion), grid, pool, num_prefix, queries)
    rows = residual_normalize(pooled)
    return rows if queries is None else torch.where(filled[..., None], rows, previous)


def pooled_start(
    start: torch.Tensor, grid: tuple[int, int], pool: int, num_prefix: int, anchor_fallback: str = "empty"
) -> torch.Tensor:
    """Start weights ``[B, P + h w]`` -> cell weights ``[B, M]`` (``pool_start``); with ``anchor_fallback=empty`` a
    sample without an anchor cell starts uniformly on the patch cells."""
    u = pool_start(start, grid, pool, num_prefix)
    if anchor_fallback == "empty":
        patch_cells = torch.arange(u.shape[1], device=u.device) >= num_prefix
        u = torch.where(u.sum(1, keepdim=True) > 0, u, patch_cells / patch_cells.sum())
    return u


def shrinking_rollout(
    mats: dict[int, torch.Tensor],
    seq: torch.Tensor | None,
    start: torch.Tensor,
    cuts: dict[int, torch.Tensor],
    block0_columns: str = "cut",
    form: str = "vector",
) -> torch.Tensor:
    """Rollout on the shrinking sequence (classification, or ``kv_reuse=off``), with one cut or several.

    A block with a cut ran on its own sequence and kept the rows ``cuts[block]`` of it; so the product
    ``R = a_{L-1} ... a_0`` is cut, at each such block, to the kept rows, and (``block0_columns=cut``) its columns
    to the first cut's kept tokens, or keeps all columns (``keep``: every position gets a computed score). At an
    input cut (``cuts`` empty) every block is already reduced.

    Args:
        mats: block -> residual-normalised matrix over the tokens its attention saw: ``[B, N', N']`` up to the
            first cut, ``[B, S_l, S_l]`` after it.
        seq: ``[B, S]`` the final sequence's positions among the ``N'`` tokens (``None``: nothing pruned).
        start: ``[B, S]`` weights over the output tokens (``[B, N']`` on a dense task: reduced to the kept anchors).
        cuts: block -> ``[B, S_after]`` positions kept after its attention, within its own sequence.
    Returns:
        ``[B, S_1]`` (the first cut's tokens; ``block0_columns=cut``) or ``[B, N']``, unnormalised.
    """
    if seq is not None and start.shape[1] != seq.shape[1]:  # dense task without K/V reuse: kept anchors only
        start = gather_tokens(start, seq)
        start = torch.where(start.sum(1, keepdim=True) > 0, start, torch.ones_like(start))
        start = start / start.sum(1, keepdim=True)
    if set(cuts) - set(mats):
        raise ValueError(f"cut blocks {sorted(set(cuts) - set(mats))} have no rollout matrix")
    first = min(cuts) if cuts else min(mats)  # blocks up to here ran every token (or, at an input cut, block 0)
    v, pending = start, []  # pending: the uncut blocks after the current position, first block first
    for block in sorted(mats, reverse=True):
        a = mats[block]
        if block not in cuts and block > first:
            pending.insert(0, a)
            continue
        v, pending = (propagate(pending, v, form) if pending else v), []
        if block in cuts:
            a = gather_tokens(a, cuts[block], dim=1)
        if block == min(mats) and cuts and block0_columns == "cut":
            a = gather_tokens(a, cuts[first], dim=2)
        v = torch.bmm(v.unsqueeze(1), a).squeeze(1)
    return v


def nearest_kept_fill(kept_scores: torch.Tensor, keep: torch.Tensor, feats: torch.Tensor) -> torch.Tensor:
    """Scores of all N patches from the kept ones: a pruned patch takes its nearest kept patch's score.

    Args:
        kept_scores: ``[B, n]`` scores of the kept patches ``keep [B, n]``.
        feats: ``[B, N, D]`` matching features, nearness by raw dot product: the cut block's head-averaged keys
            (``D = Ch``), or the patch embeddings at an input cut (``D = C``).
    Returns:
        ``[B, N]``.
    """
    nearest = torch.einsum("bnc,bkc->bnk", feats, gather_tokens(feats, keep)).argmax(dim=-1)
    return scatter_tokens(kept_scores.gather(1, nearest), keep, kept_scores)


def patch_heatmap(
    scores: torch.Tensor,
    keep: torch.Tensor | None,
    feats: torch.Tensor,
    previous: torch.Tensor | None,
    num_prefix: int,
    fill: str = "computed",
    norm: str = "sum",
) -> tuple[torch.Tensor, int]:
    """A frame's rollout over all N patches: ``[B, N]`` and the number of degenerate samples.

    Args:
        scores: ``[B, P + n]`` (kept tokens only) or ``[B, P + N]`` rollout scores.
        keep: ``[B, n]`` kept patches (``None``: all).
        feats: ``[B, N, D]`` features of ``nearest_kept_fill``, which fills patches without a score (and every
            pruned patch under ``fill=nearest_kept``).
        previous: ``[B, N]`` the previous heatmap, whose pruned positions ``fill=previous`` keeps (``None`` on
            frames that do not fill from it).
    Returns:
        The heatmap, every all-zero or non-finite sample replaced by uniform scores, sum-normalised under
        ``norm=sum``; and the count of replaced samples.
    """
    scores, num_patches = scores[:, num_prefix:], feats.shape[1]
    if fill == "previous" and previous is not None:
        kept = scores if scores.shape[1] < num_patches else scores.gather(1, keep)
        scores = scatter_tokens(previous.clone(), keep, kept)
    elif scores.shape[1] < num_patches or (fill == "nearest_kept" and keep is not None):
        kept = scores if scores.shape[1] < num_patches else scores.gather(1, keep)
        scores = nearest_kept_fill(kept, keep, feats)
    bad = ~torch.isfinite(scores).all(dim=1) | (scores.sum(dim=1) <= 0)
    if bad.any():
        scores = torch.where(bad[:, None], torch.ones_like(scores), scores)
    if norm == "sum":
        scores = sum_normalize(scores)
    return scores, int(bad.sum())
