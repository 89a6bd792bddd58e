"""Which adapter drives a model: a plain timm ViT (``vit``) or a ViTDet-style windowed one (``vit_windowed``)."""

from __future__ import annotations

from torch import nn

from tokbench.vit import ViTAdapter
from tokbench.vit_windowed import WindowedViTAdapter, is_windowed_model


def adapter_for(model: nn.Module | ViTAdapter) -> ViTAdapter:
    """The adapter that drives ``model``: plain timm ViTs, or ViTDet-style ``VisionTransformerSAM``."""
    if isinstance(model, ViTAdapter):
        return model
    return WindowedViTAdapter(model) if is_windowed_model(model) else ViTAdapter(model)
