"""Task heads for the streaming engine: what a frame's output is, and where its rollout starts.

A task turns the backbone output into predictions and supplies the rollout start vector (docs/method.md 2.5):
the class-token row for classification, an anchor mask for detection (``tokbench.models``), uniform weights
over the patch tokens for models without a class token.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from tokbench.rollout import cls_start
from tokbench.vit import ViTAdapter


def patch_uniform_start(tokens: torch.Tensor, num_prefix: int) -> torch.Tensor:
    """Uniform start over the patch tokens of ``tokens [B, S, C]`` -> ``[B, S]`` (zero on prefix tokens)."""
    b, s, _ = tokens.shape
    start = torch.zeros(b, s, device=tokens.device)
    start[:, num_prefix:] = 1.0 / (s - num_prefix)
    return start


def default_start(vit: ViTAdapter, tokens: torch.Tensor) -> torch.Tensor:
    """Class-token row if the model has one, else uniform over patches: ``[B, S]``."""
    if vit.has_class_token:
        return cls_start(tokens.shape[0], tokens.shape[1], device=tokens.device)
    return patch_uniform_start(tokens, vit.num_prefix)


@dataclass
class ClassificationTask:
    """timm's own pooling + classifier head; pruned tokens are dropped outright (no buffers)."""

    dense: bool = False

    def head(self, vit: ViTAdapter, tokens: torch.Tensor) -> torch.Tensor:
        """``tokens [B, S, C]`` -> logits ``[B, classes]``, one sample at a time: a matrix-vector product (B = 1)
        rounds differently from a matrix product, and a clip's logits must not depend on its batch partners."""
        return torch.cat([vit.classify(tokens[b : b + 1]) for b in range(tokens.shape[0])])

    def rollout_start(self, vit: ViTAdapter, predictions, tokens: torch.Tensor, grid) -> torch.Tensor:
        return default_start(vit, tokens)


@dataclass
class FeatureTask:
    """A headless backbone: the predictions are the output tokens themselves.

    With ``dense=True`` the output is the full ``[B, N', C]`` map (pruned positions filled from the output
    buffer, K/V reused); otherwise the pruned sequence ``[B, P + n, C]``.
    """

    dense: bool = False

    def head(self, vit: ViTAdapter, tokens: torch.Tensor) -> torch.Tensor:
        return tokens

    def rollout_start(self, vit: ViTAdapter, predictions, tokens: torch.Tensor, grid) -> torch.Tensor:
        return default_start(vit, tokens)
