"""Training targets and loss of the centre-heatmap detector (CenterNet-style, stride = patch size).

Shapes: B batch, K classes, (h, w) grid at ``stride`` pixels per cell.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def centre_targets(
    targets: list[dict[str, torch.Tensor]], grid: tuple[int, int], stride: int, num_classes: int
) -> dict[str, torch.Tensor]:
    """Boxes -> ``heat [B, K, h, w]`` (Gaussian bumps, 1 at centre cells), ``size``/``offset [B, 2, h, w]``,
    ``mask [B, h, w]`` (centre cells)."""
    h, w = grid
    b = len(targets)
    heat = torch.zeros(b, num_classes, h, w)
    size = torch.zeros(b, 2, h, w)
    offset = torch.zeros(b, 2, h, w)
    mask = torch.zeros(b, h, w, dtype=torch.bool)
    ys = torch.arange(h, dtype=torch.float32).view(h, 1)
    xs = torch.arange(w, dtype=torch.float32).view(1, w)
    for i, target in enumerate(targets):
        for box, label in zip(target["boxes"], target["labels"], strict=True):
            bw, bh = float(box[2] - box[0]), float(box[3] - box[1])
            cx, cy = float(box[0] + box[2]) / 2 / stride, float(box[1] + box[3]) / 2 / stride
            gx, gy = min(int(cx), w - 1), min(int(cy), h - 1)
            sigma = max(0.5, max(bw, bh) / stride / 6)
            bump = torch.exp(-((xs - gx) ** 2 + (ys - gy) ** 2) / (2 * sigma**2))
            heat[i, label] = torch.maximum(heat[i, label], bump)
            size[i, :, gy, gx] = torch.tensor([bw / stride, bh / stride]).clamp_min(1e-3).log()
            offset[i, :, gy, gx] = torch.tensor([cx - gx, cy - gy])
            mask[i, gy, gx] = True
    return {"heat": heat, "size": size, "offset": offset, "mask": mask}


def focal_loss(logits: torch.Tensor, heat: torch.Tensor) -> torch.Tensor:
    """Penalty-reduced focal loss (alpha 2, beta 4) over ``[B, K, h, w]``, normalised by the number of centres."""
    p = logits.sigmoid().clamp(1e-4, 1 - 1e-4)
    pos = heat.eq(1).float()
    pos_loss = -((1 - p) ** 2) * torch.log(p) * pos
    neg_loss = -((1 - heat) ** 4) * p**2 * torch.log(1 - p) * (1 - pos)
    return (pos_loss.sum() + neg_loss.sum()) / pos.sum().clamp_min(1)


def detection_loss(out: dict[str, torch.Tensor], target: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Focal heatmap loss + L1 on log-size (weight 0.5) and offset at centre cells."""
    mask = target["mask"].unsqueeze(1).expand(-1, 2, -1, -1)
    heat = focal_loss(out["heat"], target["heat"])
    n = mask.sum().clamp_min(1)
    size = F.l1_loss(out["size"][mask], target["size"][mask], reduction="sum") / n
    offset = F.l1_loss(out["offset"][mask], target["offset"][mask], reduction="sum") / n
    return {"loss": heat + 0.5 * size + offset, "heat": heat, "size": size, "offset": offset}
