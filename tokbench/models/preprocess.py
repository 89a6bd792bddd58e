"""Input normalisation shared by the benchmark models and timm models (frames in [0, 1] -> network input)."""

from __future__ import annotations

import torch

MEAN, STD = (0.5, 0.5, 0.5), (0.25, 0.25, 0.25)


def normalize(frames: torch.Tensor, mean: tuple[float, ...] = MEAN, std: tuple[float, ...] = STD) -> torch.Tensor:
    """``[..., 3, H, W]`` in [0, 1] -> ``(frames - mean) / std`` per channel (default: the benchmark models')."""
    mean = torch.tensor(mean, device=frames.device).view(3, 1, 1)
    std = torch.tensor(std, device=frames.device).view(3, 1, 1)
    return (frames - mean) / std


def zero_padding(inputs: torch.Tensor, valid_hw: tuple[int, int] | None) -> torch.Tensor:
    """``inputs [..., H, W]`` with everything outside the top-left ``valid_hw = (h, w)`` region set to exactly 0,
    in place (also returned); ``None``: the whole frame is picture.

    ViTDet pads its normalised input bottom/right with zeros, so the padding is 0 in the network input, not
    ``normalize(0)``.
    """
    if valid_hw is not None:
        h, w = valid_hw
        inputs[..., h:, :] = 0
        inputs[..., :h, w:] = 0
    return inputs
