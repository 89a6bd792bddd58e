"""The benchmark detector: a plain timm ViT backbone (no class token) + a light centre-heatmap head.

The head needs no torchvision C++ op: boxes come from 3x3 max-pool peak extraction on a per-class centre
heatmap, with a size and a sub-cell offset regressed at every grid cell (CenterNet style).
Shapes: B batch, C channels, K classes, (h, w) token grid, N = h * w.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from tokbench import compat
from tokbench.models.preprocess import normalize  # noqa: F401  (re-exported)
from tokbench.rollout import anchor_mask
from tokbench.vit import ViTAdapter

compat.ensure_torchvision()

from timm.models.vision_transformer import VisionTransformer  # noqa: E402


@dataclass(frozen=True)
class DetectorSpec:
    """Architecture of the benchmark detector (stored in the model card)."""

    num_classes: int = 6
    img_size: int = 320
    patch_size: int = 16
    embed_dim: int = 192
    depth: int = 6
    num_heads: int = 3
    head_dim: int = 128
    max_detections: int = 20


class CentreHead(nn.Module):
    """Token map ``[B, C, h, w]`` -> heat logits ``[B, K, h, w]``, log-size and offset ``[B, 2, h, w]``."""

    def __init__(self, dim: int, num_classes: int, hidden: int) -> None:
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(dim, hidden, 3, padding=1), nn.GELU(), nn.Conv2d(hidden, hidden, 3, padding=1), nn.GELU()
        )
        self.heat = nn.Conv2d(hidden, num_classes, 1)
        self.size = nn.Conv2d(hidden, 2, 1)
        self.offset = nn.Conv2d(hidden, 2, 1)
        nn.init.constant_(self.heat.bias, -math.log((1 - 0.01) / 0.01))

    def forward(self, fmap: torch.Tensor) -> dict[str, torch.Tensor]:
        y = self.body(fmap)
        return {"heat": self.heat(y), "size": self.size(y), "offset": self.offset(y).sigmoid()}


class ViTDetector(nn.Module):
    """Plain timm ViT + ``CentreHead``. ``forward(frames)`` takes normalised ``[B, 3, H, W]``."""

    def __init__(self, spec: DetectorSpec = DetectorSpec()) -> None:
        super().__init__()
        self.spec = spec
        self.backbone = VisionTransformer(
            img_size=spec.img_size,
            patch_size=spec.patch_size,
            embed_dim=spec.embed_dim,
            depth=spec.depth,
            num_heads=spec.num_heads,
            class_token=False,
            global_pool="",
            num_classes=0,
        )
        self.head = CentreHead(spec.embed_dim, spec.num_classes, spec.head_dim)

    def head_from_tokens(self, tokens: torch.Tensor, grid: tuple[int, int]) -> dict[str, torch.Tensor]:
        """Patch tokens ``[B, N, C]`` -> head outputs.

        The map is made contiguous (NCHW): as a view of the tokens it has channels-last strides, for which oneDNN
        picks batch-size-dependent convolutions; on a contiguous map every image's outputs are the same bits
        whatever batch it is in (``tests/test_lockstep.py`` checks this through the engine).
        """
        b, n, c = tokens.shape
        return self.head(tokens.transpose(1, 2).reshape(b, c, grid[0], grid[1]).contiguous())

    def forward(self, frames: torch.Tensor) -> dict[str, torch.Tensor]:
        tokens = self.backbone.forward_features(frames)
        return self.head_from_tokens(tokens, self.backbone.patch_embed.grid_size)


def decode(out: dict[str, torch.Tensor], stride: int, max_detections: int) -> list[dict[str, torch.Tensor]]:
    """Peaks of the centre heatmap -> per image ``{"boxes" [M, 4] xyxy px, "scores" [M], "labels" [M]}``."""
    heat = out["heat"].sigmoid()
    b, k, h, w = heat.shape
    peaks = heat * (F.max_pool2d(heat, 3, stride=1, padding=1) == heat)
    scores, idx = peaks.reshape(b, -1).topk(min(max_detections, k * h * w), dim=1)
    labels, cell = idx // (h * w), idx % (h * w)
    ys, xs = (cell // w).float(), (cell % w).float()
    offset = out["offset"].reshape(b, 2, -1).gather(2, cell.unsqueeze(1).expand(b, 2, -1))
    size = out["size"].reshape(b, 2, -1).gather(2, cell.unsqueeze(1).expand(b, 2, -1)).exp() * stride
    cx, cy = (xs + offset[:, 0]) * stride, (ys + offset[:, 1]) * stride
    boxes = torch.stack([cx - size[:, 0] / 2, cy - size[:, 1] / 2, cx + size[:, 0] / 2, cy + size[:, 1] / 2], dim=-1)
    return [{"boxes": boxes[i], "scores": scores[i], "labels": labels[i]} for i in range(b)]


class DetectionTask:
    """Engine task for the detector: a dense map, detections, and anchors from the frame's own detections."""

    dense = True

    def __init__(self, detector: ViTDetector, score_thr: float = 0.1, clip_end: str = "g_minus_1",
                 fallback: str = "empty") -> None:
        self.detector, self.score_thr, self.clip_end, self.fallback = detector, score_thr, clip_end, fallback

    def head(self, vit: ViTAdapter, tokens: torch.Tensor) -> list[dict[str, torch.Tensor]]:
        """Dense output ``[B, N', C]`` -> detections per image, the whole batch in one head call (a clip's
        detections do not depend on which clips share its batch: see ``ViTDetector.head_from_tokens``)."""
        grid, spec = vit.model.patch_embed.grid_size, self.detector.spec
        out = self.detector.head_from_tokens(tokens[:, vit.num_prefix :], grid)
        return decode(out, spec.patch_size, spec.max_detections)

    def box_mask(self, predictions: list[dict[str, torch.Tensor]], grid: tuple[int, int]) -> torch.Tensor:
        """Patches covered by a detection scoring above the threshold: ``[B, N]`` bool (may be empty)."""
        size = self.detector.spec.img_size
        return torch.stack([
            anchor_mask(det["boxes"], det["scores"], grid, (size, size), self.score_thr, self.clip_end)
            for det in predictions
        ])

    def rollout_start(self, vit: ViTAdapter, predictions, tokens: torch.Tensor, grid) -> torch.Tensor:
        """Normalised anchor mask over the output tokens ``[B, N']`` (prefix weight 0)."""
        rows = []
        for det, mask in zip(predictions, self.box_mask(predictions, grid).float(), strict=True):
            no_boxes = not bool((det["scores"] > self.score_thr).any())
            if mask.sum() == 0 and (self.fallback == "empty" or no_boxes):
                mask = torch.ones_like(mask)  # reference: every token is an anchor when no box passes
            rows.append(mask / mask.sum().clamp_min(1.0))  # an empty set stays all-zero (counted as degenerate)
        return F.pad(torch.stack(rows), (vit.num_prefix, 0))
