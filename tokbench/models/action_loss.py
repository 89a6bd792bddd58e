"""Training loss of the benchmark action model: clip cross-entropy plus per-frame auxiliary targets.

Cross-entropy alone does not train the factorised model in a CPU budget: the class is in how the object's state
changes over time, and a class token learns to carry that state (where the object is, how large, which way it
points) only slowly. The generator knows the state, so each frame also supervises
- the class token's output: a linear regression of centre, log radius and orientation (``STATE``);
- where the class token attends, in every block after the first: towards the object's patches;
- every patch token: whether it covers the object.
The auxiliary heads are used in training only; the shipped model is the plain ``ViViTFactorised``.
Shapes: B clips, T frames, N patches, C channels, H heads.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from tokbench.data import SyntheticAction
from tokbench.models.action import ViViTFactorised
from tokbench.vit import ViTAdapter

STATE = ("centre_x", "centre_y", "log_radius", "cos_angle", "sin_angle")
_LOG_RADIUS_MID = float(np.log(0.12))


def frame_targets(data: SyntheticAction, index: int, patch: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Clip ``index``'s per-frame state ``[T, 5]`` (``STATE``, each about unit scale) and patch coverage ``[T, N]``
    (the fraction of each patch the object covers)."""
    motion, size = data.motion(index), data.generator_spec.size
    state = np.concatenate(
        [
            (motion["centre"] / size - 0.5) * 4,
            (np.log(motion["radius"] / size) - _LOG_RADIUS_MID)[:, None] * 3,
            np.cos(motion["angle"])[:, None],
            np.sin(motion["angle"])[:, None],
        ],
        axis=1,
    )
    masks = torch.from_numpy(data.object_masks(index)).float().unsqueeze(1)
    coverage = F.avg_pool2d(masks, patch).flatten(1)
    return torch.tensor(state, dtype=torch.float32), coverage


class AuxHeads(nn.Module):
    """Training-only heads: class token -> ``STATE``; patch token -> object logit."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.state = nn.Linear(dim, len(STATE))
        self.object = nn.Linear(dim, 1)


def _spatial_with_cls_attention(vit: ViTAdapter, images: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """``[F, 3, H, W]`` -> final tokens ``[F, 1 + N, C]`` and, for blocks 1.., the class token's attention
    ``[F, H, 1 + N]``."""
    z, grid = vit.embed(images)
    x = vit.tokens(z, grid)
    cls_rows = []
    for i, blk in enumerate(vit.blocks):
        q, k, v = vit.qkv(blk, x)
        out, probs = vit.attend(blk, q, k, v, need_probs=i > 0)
        if probs is not None:
            cls_rows.append(probs[:, :, 0])
        x = vit.mlp_residual(blk, vit.attn_residual(blk, x, out))
    return vit.finish(x), cls_rows


def action_loss(
    model: ViViTFactorised,
    aux: AuxHeads,
    clips: torch.Tensor,
    labels: torch.Tensor,
    state: torch.Tensor,
    coverage: torch.Tensor,
    aux_weight: float = 1.0,
) -> dict[str, torch.Tensor]:
    """Losses for normalised ``clips [B, T, 3, H, W]``, ``labels [B]``, ``state [B, T, 5]``, ``coverage [B, T, N]``.

    Returns ``loss`` (optimised) and its parts ``ce``, ``state``, ``attn``, ``object``.
    """
    if model.spec.tubelet != 1:
        raise ValueError("the auxiliary targets are per frame; train with tubelet 1")
    b, t = clips.shape[:2]
    vit = ViTAdapter(model.spatial)
    tokens, cls_rows = _spatial_with_cls_attention(vit, clips.flatten(0, 1))
    features = model.spatial.forward_head(tokens, pre_logits=True)  # [B T, C]
    ce = F.cross_entropy(model.temporal(features.view(b, t, -1)), labels, label_smoothing=0.1)
    state_loss = F.smooth_l1_loss(aux.state(features), state.flatten(0, 1))
    cover = coverage.flatten(0, 1)
    where = cover / cover.sum(dim=1, keepdim=True).clamp_min(1e-6)  # [B T, N]; all zero when the object is out
    attn_loss = torch.stack(
        [-(row[:, :, vit.num_prefix :].clamp_min(1e-8).log() * where[:, None]).sum(-1).mean() for row in cls_rows]
    ).mean()
    object_loss = F.binary_cross_entropy_with_logits(aux.object(tokens[:, vit.num_prefix :]).squeeze(-1), cover)
    loss = ce + aux_weight * (state_loss + 0.1 * attn_loss + object_loss)
    return {"loss": loss, "ce": ce, "state": state_loss, "attn": attn_loss, "object": object_loss}
