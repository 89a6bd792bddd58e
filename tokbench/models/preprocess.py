"""Input normalisation shared by the benchmark models and timm models (frames in [0, 1] -> network input)."""

from __future__ import annotations

import torch

MEAN, STD = (0.5, 0.5, 0.5), (0.25, 0.25, 0.25)


def normalize(frames: torch.Tensor, mean: tuple[float, ...] = MEAN, std: tuple[float, ...] = STD) -> torch.Tensor:
    """``[..., 3, H, W]`` in [0, 1] -> ``(frames - mean) / std`` per channel (default: the benchmark models')."""
    mean = torch.tensor(mean, device=frames.device).view(3, 1, 1)
    std = torch.tensor(std, device=frames.device).view(3, 1, 1)
    return (frames - mean) / std
