"""Local checkpoint files (.pth/.pt/.bin via ``torch.load(weights_only=True)``, .safetensors, or detectron2's
.pkl of numpy arrays, unpickled with only numpy's array constructors allowed) into a model.

Common wrappers are unwrapped (``{"model": ...}``, ``{"state_dict": ...}``, ``{"module": ...}``) and common key
prefixes stripped (``module.``, ``model.``, ``backbone.``) only where that makes the keys match the model.
Mismatches are reported in one line: missing keys, unexpected keys, or the first shape mismatches.
"""

from __future__ import annotations

import pickle
from collections.abc import Callable
from pathlib import Path

import torch
from torch import nn

from tokbench.errors import DataError

SUFFIXES = (".pth", ".pt", ".bin", ".ckpt", ".safetensors", ".pkl")
# What a model-zoo .pkl (a dict of numpy arrays) needs, and nothing that could run code.
_PICKLE_GLOBALS = {
    ("collections", "OrderedDict"), ("numpy", "ndarray"), ("numpy", "dtype"), ("_codecs", "encode"),
    ("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
    ("numpy.core.multiarray", "scalar"), ("numpy._core.multiarray", "scalar"),
}
_WRAPPERS = ("model", "state_dict", "module", "model_state")
_PREFIXES = ("module.", "model.", "backbone.", "encoder.")

Converter = Callable[[dict[str, torch.Tensor]], dict[str, torch.Tensor]]


def read_state_dict(path: Path) -> dict[str, torch.Tensor]:
    """The tensors of a checkpoint file, unwrapped; ``DataError`` for a missing or unreadable file."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"checkpoint {path} does not exist")
    if path.suffix not in SUFFIXES:
        raise DataError(f"checkpoint {path}: unknown format {path.suffix!r}; expected one of {', '.join(SUFFIXES)}")
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            state = load_file(str(path))
        elif path.suffix == ".pkl":
            state = _read_numpy_pickle(path)
        else:
            state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # torch/safetensors raise many types for corrupt files
        reason = str(err).splitlines()[0] if str(err) else type(err).__name__
        raise DataError(f"cannot read checkpoint {path}: {reason}") from None
    while isinstance(state, dict):
        wrapper = next((k for k in _WRAPPERS if k in state and isinstance(state[k], dict)), None)
        if wrapper is None:
            break
        state = state[wrapper]
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise DataError(f"checkpoint {path} holds no state dict of tensors")
    return state


class _NumpyUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str):
        if (module, name) not in _PICKLE_GLOBALS:
            raise pickle.UnpicklingError(f"refusing to unpickle {module}.{name}: a .pkl checkpoint may hold numpy "
                                         "arrays only")
        return super().find_class(module, name)


def _read_numpy_pickle(path: Path) -> dict:
    """detectron2 model-zoo layout: ``{"model": {name: ndarray}, ...}`` -> the same dicts with tensors."""
    import numpy as np

    with open(path, "rb") as f:
        data = _NumpyUnpickler(f, encoding="latin1").load()

    def tensors(d):
        if isinstance(d, dict):
            return {k: tensors(v) for k, v in d.items() if isinstance(v, (dict, np.ndarray))}
        return torch.from_numpy(np.ascontiguousarray(d))

    return tensors(data)


def _strip_prefixes(state: dict[str, torch.Tensor], expected: set[str]) -> dict[str, torch.Tensor]:
    for prefix in _PREFIXES:
        if not (state.keys() & expected) and all(k.startswith(prefix) for k in state):
            state = {k[len(prefix) :]: v for k, v in state.items()}
    return state


def _listing(keys: list[str], limit: int = 4) -> str:
    more = f" (+{len(keys) - limit} more)" if len(keys) > limit else ""
    return ", ".join(keys[:limit]) + more


def load_checkpoint(model: nn.Module, path: Path, convert: Converter | None = None) -> nn.Module:
    """Load ``path`` into ``model`` strictly (after ``convert``, if given); returns the model in eval mode."""
    state = read_state_dict(path)
    return load_state(model, convert(state) if convert else state, str(path))


def load_state(model: nn.Module, state: dict[str, torch.Tensor], source: str) -> nn.Module:
    """Strictly load ``state`` (prefixes stripped where that makes keys match); one-line errors name ``source``."""
    expected = model.state_dict()
    state = _strip_prefixes(state, set(expected))
    missing = sorted(expected.keys() - state.keys())
    unexpected = sorted(state.keys() - expected.keys())
    if missing or unexpected:
        parts = [f"missing keys: {_listing(missing)}"] if missing else []
        parts += [f"unexpected keys: {_listing(unexpected)}"] if unexpected else []
        raise DataError(f"checkpoint {source} does not fit {type(model).__name__}; " + "; ".join(parts))
    shapes = [f"{k} {tuple(state[k].shape)} vs model {tuple(v.shape)}" for k, v in expected.items()
              if state[k].shape != v.shape]
    if shapes:
        raise DataError(f"checkpoint {source}: shape mismatch: {_listing(shapes, 2)}")
    model.load_state_dict({k: v.to(expected[k].dtype) for k, v in state.items()})
    return model.eval()


def head_classes(state: dict[str, torch.Tensor]) -> int:
    """Classes of a timm ViT classifier head in ``state`` (``head.weight [K, C]``, maybe under a wrapper prefix),
    0 without a head."""
    for prefix in ("", *_PREFIXES):
        if f"{prefix}head.weight" in state:
            return int(state[f"{prefix}head.weight"].shape[0])
    return 0
