"""The shipped benchmark models: loaded offline from fp16 safetensors inside the package, with their cards."""

from __future__ import annotations

import json
from pathlib import Path

import torch
from torch import nn

from tokbench.errors import DataError, unknown_name

WEIGHTS_DIR = Path(__file__).resolve().parent.parent / "weights"
SHIPPED = {"synthvid-det": "detect", "synthvid-fast-det": "detect", "synthaction-vivit": "action"}


def model_card(name: str) -> dict:
    """The JSON card of a shipped model (training command, seed, data spec, dense validation metric)."""
    if name not in SHIPPED:
        raise unknown_name("model", name, list(SHIPPED))
    path = WEIGHTS_DIR / f"{name}.json"
    if not path.exists():
        raise DataError(f"model card {path} is missing; train it with the command in the README")
    return json.loads(path.read_text())


def load_shipped(name: str) -> nn.Module:
    """Build a shipped model and load its weights (fp16 on disk, float32 in memory); eval mode."""
    model_card(name)  # a clear error for unknown names and missing cards
    return load_trained(WEIGHTS_DIR / f"{name}.safetensors")


def load_trained(path: Path) -> nn.Module:
    """A benchmark model from ``tokbench train`` output: ``<name>.safetensors`` beside its ``<name>.json`` card."""
    from safetensors.torch import load_file

    from tokbench.models.action import ActionSpec, ViViTFactorised
    from tokbench.models.detector import DetectorSpec, ViTDetector

    card = json.loads(path.with_suffix(".json").read_text())
    if SHIPPED[card["model"]] == "detect":
        model: nn.Module = ViTDetector(DetectorSpec(**card["architecture"]))
    else:
        model = ViViTFactorised(ActionSpec(**card["architecture"]))
    try:
        state = load_file(str(path))
    except Exception as err:  # safetensors raises several types for missing/corrupt files
        raise DataError(f"cannot read weights {path}: {err}") from None
    model.load_state_dict({k: v.to(torch.float32) for k, v in state.items()})
    return model.eval()
