"""ViTDet-style backbones (timm's ``VisionTransformerSAM``): windowed attention, decomposed relative positions.

The adapter keeps ``ViTAdapter``'s piece-by-piece interface, so the streaming engine prunes these models exactly
as it prunes a plain ViT. What differs is attention: a windowed block lets a query see only the keys of its own
``w x w`` window (the grid padded to a multiple of ``w``; padded positions hold the keys and values of a zero
input, as timm pads after ``norm1``), and every block may add decomposed relative-position biases (MViTv2 /
ViTDet) computed from the unscaled query. Given kept queries and their ``positions``, only those are computed,
each against its own window of the full (reused) key/value buffers, so the multiply-adds are exactly the kept
queries' share (``window_queries=kept``). For the reference's ``window_queries=all`` the engine passes the buffered
queries of every position (``positions=None``) and keeps the kept outputs.

Shapes: B batch, H heads, S queries, N = h * w patches (no prefix tokens), Ch head channels, w window side.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from tokbench import compat
from tokbench.errors import UnsupportedModelError
from tokbench.vit import ViTAdapter

compat.ensure_torchvision()

from timm.layers import resample_abs_pos_embed_nhwc  # noqa: E402
from timm.models.vision_transformer_sam import Block, VisionTransformerSAM, get_rel_pos  # noqa: E402


def check_windowed_supported(model: nn.Module) -> None:
    """Raise ``UnsupportedModelError`` for SAM-family variants tokbench cannot drive faithfully."""
    if getattr(model, "rope_global", None) is not None or getattr(model, "rope_window", None) is not None:
        raise UnsupportedModelError("rotary position embeddings are not supported; use decomposed rel-pos models")
    for i, blk in enumerate(model.blocks):
        if type(blk) is not Block:
            raise UnsupportedModelError(f"block {i} is a {type(blk).__name__}; only timm's SAM Block is supported")
        if not isinstance(blk.attn.q_norm, nn.Identity) or not isinstance(blk.attn.k_norm, nn.Identity):
            raise UnsupportedModelError(f"block {i} uses qk-norm, which tokbench's explicit attention does not handle")


class WindowedViTAdapter(ViTAdapter):
    """``ViTAdapter`` for ``VisionTransformerSAM`` (ViTDet-B: windows of 14, global blocks 2, 5, 8, 11)."""

    check = staticmethod(check_windowed_supported)

    def __init__(self, model: nn.Module) -> None:
        super().__init__(model)
        self.grid: tuple[int, int] = tuple(model.patch_embed.grid_size)

    needs_all_keys = True

    def is_global(self, index: int) -> bool:
        return self.blocks[index].window_size == 0

    def embed(self, frames: torch.Tensor) -> tuple[torch.Tensor, tuple[int, int]]:
        """As ``ViTAdapter.embed`` (NHWC patch embedding flattened); remembers the grid for windowed attention."""
        z, self.grid = super().embed(frames)
        return z, self.grid

    def tokens(self, z: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
        """Absolute position embedding (resampled to the grid) + pre-norm: ``[B, N, C]`` -> ``[B, N, C]``."""
        m = self.model
        x = z.reshape(z.shape[0], grid[0], grid[1], -1)
        if m.pos_embed is not None:
            x = x + resample_abs_pos_embed_nhwc(m.pos_embed, list(grid))
        return m.norm_pre(m.patch_drop(m.pos_drop(x))).reshape(z.shape)

    def attend(
        self,
        block: Block,
        q: torch.Tensor,
        k: torch.Tensor,
        v: torch.Tensor,
        *,
        need_probs: bool,
        positions: torch.Tensor | None = None,
        explicit: bool = False,
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Attention of queries ``q [B, H, S, Ch]`` at patch ``positions [B, S]`` (``None``: all N, in order).

        Global blocks attend over ``k, v`` as given (``[B, H, Sk, Ch]``; with a relative-position bias they must
        hold all N positions). Windowed blocks need all N keys; their probabilities are never returned (the
        rollout skips windowed blocks), so ``need_probs`` applies to global blocks only. ``explicit``: explicit
        matmuls instead of fused SDPA (kept queries always run explicitly).
        """
        if block.window_size == 0:
            if block.attn.use_rel_pos and k.shape[2] != self.grid[0] * self.grid[1]:
                raise UnsupportedModelError("relative-position attention needs every key: run with kv_reuse on")
            qy, qx = _coords(positions, q, self.grid)
            bias = _rel_bias(block, q, qy, qx, self.grid) if block.attn.use_rel_pos else None
            return _attention(block, q, k, v, bias, need_probs, explicit)
        if need_probs:
            raise UnsupportedModelError("windowed blocks take no part in the rollout")
        if positions is None:
            return _windows_all(block, q, k, v, self.grid, explicit), None
        return _windows_kept(block, q, k, v, positions, self.grid), None

    def finish(self, x: torch.Tensor) -> torch.Tensor:
        """Identity: the SAM neck is a convolution over the full map, so it belongs to the task head."""
        return x

    def classify(self, x: torch.Tensor) -> torch.Tensor:
        raise UnsupportedModelError("SAM/ViTDet backbones have no classifier in tokbench; use them as features")


def _coords(positions: torch.Tensor | None, q: torch.Tensor, grid: tuple[int, int]):
    """Row and column of every query: ``[B, S]`` each (``positions None``: all N in raster order)."""
    if positions is None:
        positions = torch.arange(q.shape[2], device=q.device).expand(q.shape[0], -1)
    return positions // grid[1], positions % grid[1]


def _rel_bias(block: Block, q: torch.Tensor, qy: torch.Tensor, qx: torch.Tensor, size: tuple[int, int]):
    """Decomposed relative-position bias of queries at ``(qy, qx)`` over all keys of a ``size`` grid.

    ``q [B, H, S, Ch]`` (unscaled, as timm/ViTDet), ``qy, qx [B, S]`` -> ``[B, H, S, size_h * size_w]``.
    """
    attn = block.attn
    rh = get_rel_pos(size[0], size[0], attn.rel_pos_h)[qy]  # [B, S, kh, Ch]
    rw = get_rel_pos(size[1], size[1], attn.rel_pos_w)[qx]  # [B, S, kw, Ch]
    rel_h = torch.einsum("bhsc,bskc->bhsk", q, rh)
    rel_w = torch.einsum("bhsc,bskc->bhsk", q, rw)
    return (rel_h[..., :, None] + rel_w[..., None, :]).flatten(-2)


def _attention(block: Block, q, k, v, bias, need_probs: bool, explicit: bool = False):
    if not (need_probs or explicit):
        return F.scaled_dot_product_attention(q, k, v, attn_mask=bias), None
    logits = (q * block.attn.scale) @ k.transpose(-2, -1)
    probs = (logits if bias is None else logits + bias).softmax(dim=-1)
    return probs @ v, probs if need_probs else None


def _padded_windows(block: Block, t: torch.Tensor, part: int, grid: tuple[int, int]) -> torch.Tensor:
    """``t [B, H, N, Ch]`` (q, k or v: ``part`` 0, 1, 2) -> windows ``[B, H, nW, w*w, Ch]``.

    Padding cells get the projection of a zero input (the qkv bias), as timm pads the normed input with zeros.
    """
    ws, (h, w) = block.window_size, grid
    b, nh, _, ch = t.shape
    hp, wp = -(-h // ws) * ws, -(-w // ws) * ws
    t = t.reshape(b, nh, h, w, ch)
    if (hp, wp) != (h, w):
        bias = block.attn.qkv.bias
        fill = torch.zeros(nh, ch, dtype=t.dtype, device=t.device) if bias is None else bias.view(3, nh, ch)[part]
        padded = fill.view(1, nh, 1, 1, ch).expand(b, nh, hp, wp, ch).clone()
        padded[:, :, :h, :w] = t
        t = padded
    t = t.reshape(b, nh, hp // ws, ws, wp // ws, ws, ch).permute(0, 1, 2, 4, 3, 5, 6)
    return t.reshape(b, nh, -1, ws * ws, ch)


def _windows_all(block: Block, q, k, v, grid: tuple[int, int], explicit: bool = False) -> torch.Tensor:
    """Every query in its window (timm's partition path): ``[B, H, N, Ch]``."""
    ws, (h, w) = block.window_size, grid
    b, nh, _, ch = q.shape
    qw, kw, vw = (  # windows as batch: [B * nW, H, w*w, Ch]
        _padded_windows(block, t, i, grid).transpose(1, 2).reshape(-1, nh, ws * ws, ch) for i, t in enumerate((q, k, v))
    )
    bias = None
    if block.attn.use_rel_pos:
        local = torch.arange(ws * ws, device=q.device).expand(qw.shape[0], -1)
        bias = _rel_bias(block, qw, local // ws, local % ws, (ws, ws))
    out, _ = _attention(block, qw, kw, vw, bias, need_probs=False, explicit=explicit)
    hp, wp = -(-h // ws) * ws, -(-w // ws) * ws
    out = out.reshape(b, hp // ws, wp // ws, nh, ws, ws, ch).permute(0, 3, 1, 4, 2, 5, 6).reshape(b, nh, hp, wp, ch)
    return out[:, :, :h, :w].reshape(b, nh, h * w, ch)


def _windows_kept(block: Block, q, k, v, positions: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
    """Kept queries ``q [B, H, S, Ch]`` at ``positions [B, S]``, each against its own window of the full k, v.

    Queries are grouped by window (a loop over the occupied windows of each sample), so the work is exactly the
    kept queries times one window of keys, without copying a window per query.
    """
    ws, w = block.window_size, grid[1]
    kw, vw = _padded_windows(block, k, 1, grid), _padded_windows(block, v, 2, grid)  # [B, H, nW, w*w, Ch]
    qy, qx = positions // w, positions % w
    window = (qy // ws) * (-(-w // ws)) + qx // ws  # [B, S]
    bias = _rel_bias(block, q, qy % ws, qx % ws, (ws, ws)) if block.attn.use_rel_pos else None  # [B, H, S, w*w]
    out = torch.empty_like(q)
    for b in range(q.shape[0]):
        for win in window[b].unique().tolist():
            rows = (window[b] == win).nonzero().squeeze(1)
            logits = (q[b][:, rows] * block.attn.scale) @ kw[b, :, win].transpose(-2, -1)  # [H, m, w*w]
            if bias is not None:
                logits = logits + bias[b][:, rows]
            out[b][:, rows] = logits.softmax(dim=-1) @ vw[b, :, win]
    return out


def is_windowed_model(model: nn.Module) -> bool:
    return isinstance(model, VisionTransformerSAM)
