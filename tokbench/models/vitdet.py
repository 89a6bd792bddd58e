"""ViTDet-B (the paper's detector backbone) as a timm ``VisionTransformerSAM``, and detectron2 checkpoint conversion.

ViTDet-B: ViT-B/16, 14 x 14 windowed attention in blocks 0, 1, 3, 4, 6, 7, 9, 10, global attention in 2, 5, 8,
11, decomposed relative positions, absolute position embedding, no class token, input padded to 672 or 1024. The
input is normalised with ImageNet mean / std on the 0-255 scale (``PIXEL_MEAN`` / ``PIXEL_STD``, RGB; the same
rule on tokbench's [0, 1] frames is ``VITDET_MEAN`` / ``VITDET_STD``) and zero-padded after normalisation.
The detection heads (simple feature pyramid, Cascade Mask R-CNN) are not part of tokbench: the backbone runs as a
headless feature model, scored by fidelity of its dense output features.

detectron2 key map (``model_final_*.pth`` state dicts, converted from the model zoo's .pkl with ``torch.save``):

=====================================================  ===============================================
detectron2                                             tokbench (timm ``VisionTransformerSAM``)
=====================================================  ===============================================
``backbone.net.patch_embed.proj.{weight,bias}``        ``patch_embed.proj.{weight,bias}``
``backbone.net.pos_embed`` ``[1, 1 + 14*14, C]``       ``pos_embed`` ``[1, h, w, C]``: class slot dropped,
                                                       resampled (bicubic) to the input grid
``backbone.net.blocks.i.{norm1,norm2}.*``              ``blocks.i.{norm1,norm2}.*``
``backbone.net.blocks.i.attn.{qkv,proj}.*``            ``blocks.i.attn.{qkv,proj}.*``
``backbone.net.blocks.i.attn.rel_pos_{h,w}``           same name; length ``2 s - 1`` resampled (linear)
                                                       when trained at another size
``backbone.net.blocks.i.mlp.{fc1,fc2}.*``              ``blocks.i.mlp.{fc1,fc2}.*``
``backbone.simfp_*``, ``proposal_generator.*``,        dropped (detection heads)
``roi_heads.*``, ``pixel_{mean,std}``
=====================================================  ===============================================
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from tokbench import compat
from tokbench.errors import DataError

compat.ensure_torchvision()

from timm.layers import resample_abs_pos_embed_nhwc  # noqa: E402
from timm.models.vision_transformer_sam import VisionTransformerSAM  # noqa: E402

PAPER_BACKBONES = ("vitdet_b",)
# detectron2's ViTDet input normalisation (cfg.model.pixel_mean / pixel_std, RGB, 0-255 scale) ...
PIXEL_MEAN, PIXEL_STD = (123.675, 116.28, 103.53), (58.395, 57.12, 57.375)
# ... on tokbench's [0, 1] frames: (255 x - mean) / std == (x - mean / 255) / (std / 255).
VITDET_MEAN = tuple(m / 255 for m in PIXEL_MEAN)
VITDET_STD = tuple(s / 255 for s in PIXEL_STD)
_D2_PREFIX = "backbone.net."


def vitdet_b(img_size: int = 672) -> VisionTransformerSAM:
    """ViTDet-B backbone at ``img_size`` (multiple of 16), random init, no neck and no head."""
    model = VisionTransformerSAM(
        img_size=img_size, patch_size=16, embed_dim=768, depth=12, num_heads=12, window_size=14,
        global_attn_indexes=(2, 5, 8, 11), use_rel_pos=True, neck_chans=0, num_classes=0,
    )
    model.neck = torch.nn.Identity()  # ViTDet's backbone ends at the last block (its pyramid has the norms)
    return model.eval()


def convert_detectron2(state: dict[str, torch.Tensor], model: VisionTransformerSAM) -> dict[str, torch.Tensor]:
    """A detectron2 ViTDet state dict -> ``model``'s keys and shapes (see the module key map).

    Keys outside ``backbone.net.`` are dropped; a state dict without that prefix is taken as backbone-only.
    """
    if any(k.startswith(_D2_PREFIX) for k in state):
        state = {k[len(_D2_PREFIX):]: v for k, v in state.items() if k.startswith(_D2_PREFIX)}
    target = model.state_dict()
    out = {}
    for key, value in state.items():
        want = target.get(key)
        if key == "pos_embed" and value.ndim == 3 and want is not None:
            value = _pos_embed_to_grid(value, tuple(want.shape[1:3]))
        elif key.endswith(("rel_pos_h", "rel_pos_w")) and want is not None and value.shape[0] != want.shape[0]:
            value = F.interpolate(value.T[None].float(), size=want.shape[0], mode="linear")[0].T.to(value.dtype)
        out[key] = value
    return out


def _pos_embed_to_grid(pos: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
    """``[1, (1 +) s*s, C]`` (pretraining layout, maybe with a class slot) -> ``[1, h, w, C]``."""
    n = pos.shape[1]
    side = math.isqrt(n)
    if side * side != n:
        pos, side = pos[:, 1:], math.isqrt(n - 1)
        if side * side != n - 1:
            raise DataError(f"pos_embed with {n} positions is not a square grid (with or without a class slot)")
    pos = pos.reshape(1, side, side, pos.shape[-1])
    return resample_abs_pos_embed_nhwc(pos, list(grid))
