"""The only module that knows timm internals: drive a timm ``VisionTransformer`` piece by piece.

tokbench runs timm's own modules (patch embed, position embedding, block norms, qkv/proj, MLP, LayerScale,
final norm, head) in its own loop, so tokens can leave the sequence between pieces. Attention probabilities
are computed explicitly from the block's own ``qkv`` weights only where a caller asks for them; otherwise
attention uses fused SDPA, as timm does. Shapes: B batch, N patch tokens, P prefix tokens, S = sequence length,
C channels, H heads, Ch = C / H.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from tokbench import compat
from tokbench.errors import UnsupportedModelError

compat.ensure_torchvision()

from timm.layers.attention import Attention  # noqa: E402
from timm.models.vision_transformer import Block, VisionTransformer  # noqa: E402


def check_supported(model: nn.Module) -> None:
    """Raise ``UnsupportedModelError`` for anything tokbench cannot drive faithfully."""
    if not isinstance(model, VisionTransformer):
        raise UnsupportedModelError(
            f"{type(model).__name__} is not a timm VisionTransformer; tokbench drives timm ViTs only"
        )
    for i, blk in enumerate(model.blocks):
        if type(blk) is not Block:
            raise UnsupportedModelError(f"block {i} is a {type(blk).__name__}; only timm's standard Block is supported")
        attn = blk.attn
        if type(attn) is not Attention:
            raise UnsupportedModelError(
                f"block {i} uses {type(attn).__name__} (rotary or other variant); only timm's Attention is supported"
            )
        if not isinstance(attn.q_norm, nn.Identity) or not isinstance(attn.k_norm, nn.Identity):
            raise UnsupportedModelError(f"block {i} uses qk-norm, which tokbench's explicit attention does not handle")
        if not isinstance(getattr(attn, "norm", nn.Identity()), nn.Identity) or getattr(attn, "gate", None) is not None:
            raise UnsupportedModelError(f"block {i} uses attention scale-norm or gating, which is not supported")


class ViTAdapter:
    """A timm ViT seen as pieces: ``embed`` -> ``tokens`` -> per block ``attention`` + ``mlp`` -> ``finish``."""

    check = staticmethod(check_supported)  # raises for what this adapter cannot drive

    def __init__(self, model: nn.Module) -> None:
        self.check(model)
        self.model = model.eval()
        self.blocks: list[Block] = list(model.blocks)
        self.num_prefix: int = getattr(model, "num_prefix_tokens", 0)
        self.has_class_token: bool = getattr(model, "cls_token", None) is not None
        self.embed_dim: int = model.embed_dim
        self.num_heads: int = self.blocks[0].attn.num_heads
        self.head_dim: int = self.blocks[0].attn.head_dim

    needs_all_keys = False  # windowed / relative-position attention: every query needs the full key buffer

    def is_global(self, index: int) -> bool:
        """Whether block ``index`` attends globally (plain ViTs: every block); the rollout uses global blocks."""
        return True

    @property
    def depth(self) -> int:
        return len(self.blocks)

    def embed(self, frames: torch.Tensor) -> tuple[torch.Tensor, tuple[int, int]]:
        """Patch embeddings before position embedding: ``[B, 3, H, W]`` -> ``z [B, N, C]`` and grid ``(h, w)``."""
        z = self.model.patch_embed(frames)
        if z.ndim == 4:  # dynamic_img_size models keep NHWC
            grid = (int(z.shape[1]), int(z.shape[2]))
            return z.reshape(z.shape[0], -1, z.shape[-1]), grid
        return z, tuple(self.model.patch_embed.grid_size)

    def tokens(self, z: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
        """Prefix tokens + position embedding + pre-norm: ``z [B, N, C]`` -> ``x [B, P + N, C]``."""
        m = self.model
        if m.dynamic_img_size:
            z = z.reshape(z.shape[0], grid[0], grid[1], z.shape[-1])
        x = m._pos_embed(z)
        x = m.patch_drop(x)
        return m.norm_pre(x)

    def qkv(self, block: Block, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """``norm1`` then ``qkv``: ``x [B, S, C]`` -> q, k, v each ``[B, H, S, Ch]``."""
        attn = block.attn
        b, s, _ = x.shape
        qkv = attn.qkv(block.norm1(x)).reshape(b, s, 3, attn.num_heads, attn.head_dim).permute(2, 0, 3, 1, 4)
        return qkv.unbind(0)

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
        """Scaled dot-product attention of q ``[B, H, Sq, Ch]`` over k, v ``[B, H, Sk, Ch]``.

        ``positions`` (the queries' patch indices) matter only to position-aware attention (windowed models).

        Returns the output ``[B, H, Sq, Ch]`` and, if ``need_probs``, the probabilities ``[B, H, Sq, Sk]``.
        With ``need_probs`` or ``explicit`` attention runs as explicit matmuls (q kᵀ, softmax, @ v, as timm's
        unfused path); otherwise as fused SDPA.
        """
        if not (need_probs or explicit):
            return F.scaled_dot_product_attention(q, k, v), None
        probs = ((q * block.attn.scale) @ k.transpose(-2, -1)).softmax(dim=-1)
        return probs @ v, probs if need_probs else None

    def attn_residual(self, block: Block, x: torch.Tensor, out: torch.Tensor) -> torch.Tensor:
        """``x + ls1(proj(out))`` with ``out [B, H, S, Ch]`` and ``x [B, S, C]``."""
        b, _, s, _ = out.shape
        y = block.attn.proj(out.transpose(1, 2).reshape(b, s, -1))
        return x + block.drop_path1(block.ls1(block.attn.proj_drop(y)))

    def mlp_residual(self, block: Block, x: torch.Tensor) -> torch.Tensor:
        """``x + ls2(mlp(norm2(x)))``, token-wise on ``[B, S, C]``."""
        return x + block.drop_path2(block.ls2(block.mlp(block.norm2(x))))

    def finish(self, x: torch.Tensor) -> torch.Tensor:
        """Final norm: ``[B, S, C]`` -> ``[B, S, C]``."""
        return self.model.norm(x)

    def classify(self, x: torch.Tensor) -> torch.Tensor:
        """timm's pooling and classifier head on the (possibly pruned) output ``[B, S, C]`` -> ``[B, classes]``."""
        return self.model.forward_head(x)

    def block0_keys(self, k: torch.Tensor) -> torch.Tensor:
        """Head-averaged keys of the patch tokens, ``[B, H, P + N, Ch]`` -> ``[B, N, Ch]``.

        The engine applies it to the cut block's keys (block ``prune_block``, 0 by default): the features of the
        nearest-kept fill and of ``track_features=block0_keys``.
        """
        return k[:, :, self.num_prefix :].mean(dim=1)

