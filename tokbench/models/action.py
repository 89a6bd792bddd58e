"""The benchmark action model: a ViViT-style factorised encoder built from timm parts.

A spatial timm ViT (with class token; RGTP prunes here, seeded by its class token) runs on every frame; a small
temporal transformer over the per-frame class-token outputs (plus its own class token) and a linear classifier
decide the class. Shapes: B clips, T frames, C channels, K classes.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from tokbench import compat
from tokbench.models.preprocess import normalize  # noqa: F401  (re-exported)
from tokbench.vit import ViTAdapter

compat.ensure_torchvision()

from timm.models.vision_transformer import Block, VisionTransformer  # noqa: E402


@dataclass(frozen=True)
class ActionSpec:
    """Architecture of the benchmark action model (stored in the model card)."""

    num_classes: int = 8
    num_frames: int = 16
    img_size: int = 160
    patch_size: int = 16
    embed_dim: int = 192
    depth: int = 4
    num_heads: int = 3
    temporal_depth: int = 2
    tubelet: int = 1  # frames per step: ViViT's t x p x p tubelet, as consecutive frames stacked on channels
    pos_embed: str = "sincos"  # "sincos": fixed 2D sine-cosine (the class token reads positions early); "learn"

    @property
    def num_steps(self) -> int:
        return self.num_frames // self.tubelet


# The paper's ViViT-B factorised encoders (random init: tokbench downloads nothing): 2 x 16 x 16 tubelets, 32 frames
# (16 steps per view), 12 spatial and 4 temporal blocks. EPIC-Kitchens' verb (97) and noun (300) heads are one
# 397-way linear layer here, verb logits first.
VIVIT_B = {
    "vivit_b_k400": ActionSpec(num_classes=400, num_frames=32, img_size=224, embed_dim=768, depth=12, num_heads=12,
                               temporal_depth=4, tubelet=2, pos_embed="learn"),
    "vivit_b_epic": ActionSpec(num_classes=97 + 300, num_frames=32, img_size=320, embed_dim=768, depth=12,
                               num_heads=12, temporal_depth=4, tubelet=2, pos_embed="learn"),
}


class TemporalEncoder(nn.Module):
    """``[B, T, C]`` per-frame class tokens -> logits ``[B, K]`` (own class token, learned time embedding)."""

    def __init__(self, spec: ActionSpec) -> None:
        super().__init__()
        c = spec.embed_dim
        self.cls_token = nn.Parameter(torch.zeros(1, 1, c))
        self.time_embed = nn.Parameter(torch.randn(1, spec.num_steps + 1, c) * 0.02)
        self.blocks = nn.Sequential(*[Block(c, spec.num_heads) for _ in range(spec.temporal_depth)])
        self.norm = nn.LayerNorm(c)
        self.head = nn.Linear(c, spec.num_classes)

    def forward(self, steps: torch.Tensor) -> torch.Tensor:
        x = torch.cat([self.cls_token.expand(steps.shape[0], -1, -1), steps], dim=1)
        x = self.blocks(x + self.time_embed[:, : x.shape[1]])
        return self.head(self.norm(x[:, 0]))


class ViViTFactorised(nn.Module):
    """Spatial timm ViT per frame + temporal encoder. ``forward(clips [B, T, 3, H, W])`` -> ``[B, K]``."""

    def __init__(self, spec: ActionSpec = ActionSpec()) -> None:
        super().__init__()
        self.spec = spec
        self.spatial = VisionTransformer(
            img_size=spec.img_size,
            patch_size=spec.patch_size,
            embed_dim=spec.embed_dim,
            depth=spec.depth,
            num_heads=spec.num_heads,
            in_chans=3 * spec.tubelet,
            num_classes=0,
        )
        if spec.pos_embed == "sincos":
            grid = self.spatial.patch_embed.grid_size
            with torch.no_grad():
                self.spatial.pos_embed.zero_()[0, 1:] = sincos_2d(grid, spec.embed_dim)
            self.spatial.pos_embed.requires_grad_(False)
        elif spec.pos_embed != "learn":
            raise ValueError(f"unknown pos_embed {spec.pos_embed!r}; choose sincos or learn")
        self.temporal = TemporalEncoder(spec)

    def frame_features(self, frames: torch.Tensor) -> torch.Tensor:
        """One step ``[B, 3 * tubelet, H, W]`` -> class-token output ``[B, C]``."""
        return self.spatial.forward_head(self.spatial.forward_features(frames), pre_logits=True)

    def forward(self, clips: torch.Tensor) -> torch.Tensor:
        """``[B, T, 3, H, W]`` normalised clips -> logits ``[B, K]``."""
        steps = to_steps(clips.transpose(0, 1), self.spec.tubelet)  # [S, B, 3t, H, W]
        features = self.frame_features(steps.flatten(0, 1)).view(steps.shape[0], clips.shape[0], -1)
        return self.temporal(features.transpose(0, 1))


def sincos_2d(grid: tuple[int, int], dim: int, base: float = 100.0) -> torch.Tensor:
    """Fixed 2D sine-cosine position embedding ``[h * w, dim]`` (row-major patches): a quarter of the channels
    each for sin and cos of x and of y, at ``dim / 4`` frequencies ``base ** (-i / (dim / 4))``, amplitude 1."""
    h, w = grid
    quarter = dim // 4
    if quarter * 4 != dim:
        raise ValueError(f"sincos position embedding needs a width divisible by 4, got {dim}")
    omega = base ** (-torch.arange(quarter, dtype=torch.float32) / quarter)
    ys, xs = torch.meshgrid(torch.arange(h, dtype=torch.float32), torch.arange(w, dtype=torch.float32), indexing="ij")
    x, y = xs.flatten()[:, None] * omega, ys.flatten()[:, None] * omega
    return torch.cat([x.sin(), x.cos(), y.sin(), y.cos()], dim=1)


def to_steps(frames: torch.Tensor, tubelet: int) -> torch.Tensor:
    """Frames ``[T, ..., 3, H, W]`` -> steps ``[T // t, ..., 3 t, H, W]``: each step stacks ``t`` consecutive
    frames on the channel axis (frame-major), which makes a 2D patch embedding a ``t x p x p`` tubelet embedding.
    Trailing frames that do not fill a step are dropped."""
    if tubelet == 1:
        return frames
    n = frames.shape[0] // tubelet * tubelet
    return frames[:n].unflatten(0, (n // tubelet, tubelet)).movedim(1, -4).flatten(-4, -3)


class SpatialStepTask:
    """Engine task for the spatial model: per-frame class-token features, rollout seeded by the class token."""

    dense = False

    def head(self, vit: ViTAdapter, tokens: torch.Tensor) -> torch.Tensor:
        """Pruned output ``[B, P + n, C]`` -> pooled pre-logits ``[B, C]``."""
        return vit.model.forward_head(tokens, pre_logits=True)

    def rollout_start(self, vit: ViTAdapter, predictions, tokens: torch.Tensor, grid) -> torch.Tensor:
        start = torch.zeros(tokens.shape[0], tokens.shape[1], device=tokens.device)
        start[:, 0] = 1
        return start
