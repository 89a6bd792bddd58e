"""Any model tokbench runs, resolved by name: a shipped benchmark model, or a timm ViT (random init or a checkpoint).

``load_model`` returns a ``LoadedModel``: the whole model, the timm ViT the engine prunes, what its output is
(``detect``, ``action``, ``classify`` or ``features``), and how to build an engine for a method configuration.
timm models are created with ``pretrained=False`` (nothing is downloaded; weights come from ``--checkpoint``)
unless ``--pretrained`` asks for timm's own pretrained loading.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import torch
from torch import nn

from tokbench import compat
from tokbench.adapters import adapter_for
from tokbench.config import MethodConfig
from tokbench.engine import StreamingEngine
from tokbench.errors import ConfigError, TokbenchError, unknown_name
from tokbench.models import SHIPPED, WEIGHTS_DIR, load_shipped, model_card
from tokbench.models.action import VIVIT_B, to_steps
from tokbench.models.checkpoint import head_classes, load_checkpoint, load_state, read_state_dict
from tokbench.models.preprocess import MEAN, STD, normalize, zero_padding
from tokbench.models.vitdet import PAPER_BACKBONES, VITDET_MEAN, VITDET_STD, convert_detectron2, vitdet_b

KINDS = ("detect", "action", "classify", "features")


@dataclass
class LoadedModel:
    """A resolved model. ``backbone`` is the timm ViT the engine prunes; ``img_size`` is its input ``(H, W)``."""

    name: str
    kind: str
    model: nn.Module
    backbone: nn.Module
    img_size: tuple[int, int]
    card: dict | None = None
    checkpoint: str | None = None
    mean: tuple[float, float, float] = MEAN
    std: tuple[float, float, float] = STD
    tubelet: int = 1  # video frames per engine step (ViViT tubelets)
    weights: str = ""  # identity of the weights: checkpoint:<sha256>, shipped:<name>@<sha256>, random-init:seed=<s>

    def normalize(self, frames: torch.Tensor, valid_hw: tuple[int, int] | None = None) -> torch.Tensor:
        """``[..., 3, H, W]`` in [0, 1] -> the model's input normalisation. With ``valid_hw = (h, w)`` only the
        top-left ``h x w`` is picture: the padding around it is exactly 0 in the output (ViTDet's input rule)."""
        return zero_padding(normalize(frames, self.mean, self.std), valid_hw)

    def steps(self, frames: torch.Tensor, valid_hw: tuple[int, int] | None = None) -> torch.Tensor:
        """Frames ``[T, ..., 3, H, W]`` in [0, 1] -> normalised engine steps ``[T // t, ..., 3 t, H, W]``
        (``valid_hw`` as in ``normalize``; a clip's ``Clip.valid_hw``)."""
        return to_steps(self.normalize(frames, valid_hw), self.tubelet)

    def task(self, config: MethodConfig):
        """The engine task for this model's output."""
        if self.kind == "detect":
            from tokbench.models.detector import DetectionTask

            return DetectionTask(self.model, config.anchor_score_thr, config.anchor_clip_end, config.anchor_fallback)
        if self.kind == "action":
            from tokbench.models.action import SpatialStepTask

            return SpatialStepTask()
        from tokbench.tasks import ClassificationTask, FeatureTask

        # a headless backbone's product is its dense feature map: keep every position (buffers, K/V reuse)
        return ClassificationTask() if self.kind == "classify" else FeatureTask(dense=True)

    def engine(self, config: MethodConfig) -> StreamingEngine:
        return StreamingEngine(self.backbone, config, self.task(config))

    def describe(self) -> dict:
        """Provenance: name, kind, input size, where the weights came from and their identity."""
        return {"model": self.name, "kind": self.kind, "img_size": list(self.img_size), "weights": self.weights,
                "checkpoint": self.checkpoint}


@lru_cache(maxsize=16)
def _sha256(path: str, mtime_ns: int, size: int) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def file_sha256(path: Path) -> str:
    """SHA-256 of a file's bytes (memoised per path, modification time and size)."""
    stat = Path(path).stat()
    return _sha256(str(Path(path).resolve()), stat.st_mtime_ns, stat.st_size)


def weights_identity(name: str, checkpoint: Path | None, seed: int) -> str:
    """What the weights are: ``checkpoint:<sha256>`` (a user file, over any shipped or random weights),
    ``shipped:<name>@<sha256>`` or ``random-init:seed=<s>``."""
    if checkpoint is not None:
        return f"checkpoint:{file_sha256(checkpoint)}"
    if name in SHIPPED:
        return f"shipped:{name}@{file_sha256(WEIGHTS_DIR / f'{name}.safetensors')}"
    return f"random-init:seed={seed}"


def _seeded(seed: int, build):
    """``build()`` with torch's global generator seeded by ``seed``, leaving the caller's generator untouched."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return build()


def _timm_names() -> list[str]:
    import timm

    return timm.list_models()


def wrap_model(name: str, model: nn.Module) -> LoadedModel:
    """A benchmark ``ViTDetector`` / ``ViViTFactorised`` already in memory, as a ``LoadedModel``."""
    kind = "detect" if hasattr(model, "backbone") else "action"
    backbone = model.backbone if kind == "detect" else model.spatial
    tubelet = model.spec.tubelet if kind == "action" else 1
    return LoadedModel(name, kind, model.eval(), backbone, tuple(backbone.patch_embed.img_size), tubelet=tubelet)


def load_model(name: str, checkpoint: Path | None = None, img_size: int | None = None, seed: int = 0,
               pretrained: bool = False, pretrained_overlay: dict | None = None) -> LoadedModel:
    """Resolve ``name``: a shipped model (``tokbench models``) or any timm ViT name.

    Randomly initialised weights (a timm name or paper model without ``checkpoint``) are drawn from ``seed``, so the
    same command builds the same model; ``LoadedModel.weights`` names them. ``pretrained`` loads a timm model's hub
    weights through timm's own loading (and its local cache); ``pretrained_overlay`` is passed to timm as
    ``pretrained_cfg_overlay`` (e.g. ``{"file": path}``: timm's file override of the pretrained config).
    """
    if pretrained and checkpoint is not None:
        raise ConfigError("--pretrained and --checkpoint both name the weights; give one")
    if pretrained and (name in SHIPPED or name in VIVIT_B or name in PAPER_BACKBONES):
        raise ConfigError(f"--pretrained applies to timm model names; {name} takes --checkpoint")
    loaded = _load_model(name, checkpoint, img_size, seed, (pretrained_overlay or {}) if pretrained else None)
    loaded.weights = (f"pretrained:{loaded.model.pretrained_cfg.get('hf_hub_id') or name}@{state_sha256(loaded.model)}"
                      if pretrained else weights_identity(name, checkpoint, seed))
    return loaded


def state_sha256(model: nn.Module) -> str:
    """SHA-256 over a model's state dict (names, shapes and bytes, in key order): the identity of loaded weights."""
    digest = hashlib.sha256()
    for key, value in sorted(model.state_dict().items()):
        digest.update(key.encode())
        digest.update(str(tuple(value.shape)).encode())
        digest.update(value.detach().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()


def _create_pretrained(name: str, overlay: dict, kwargs: dict) -> nn.Module:
    """A timm model with its pretrained weights (hub, timm's cache, or the overlay's file); one-line errors."""
    import timm

    try:
        return timm.create_model(name, pretrained=True, pretrained_cfg_overlay=overlay or None, **kwargs)
    except Exception as err:  # hub, network and cache errors come in many types
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise TokbenchError(
            f"cannot load pretrained weights of {name} ({type(err).__name__}: {first[:200]}); offline without a "
            "cached copy? Download them elsewhere and pass --checkpoint FILE") from None


def _load_model(name: str, checkpoint: Path | None, img_size: int | None, seed: int,
                overlay: dict | None = None) -> LoadedModel:
    compat.ensure_torchvision()
    if name in SHIPPED:
        if img_size is not None:
            raise ConfigError(f"{name} is trained at a fixed size; --img-size applies to timm models only")
        model = load_shipped(name)
        if checkpoint is not None:
            load_checkpoint(model, checkpoint)
        loaded = wrap_model(name, model)
        loaded.card, loaded.checkpoint = model_card(name), str(checkpoint) if checkpoint else None
        return loaded
    if name in VIVIT_B:
        from tokbench.models.action import ViViTFactorised

        if img_size is not None:
            raise ConfigError(f"{name} has a fixed input size; --img-size applies to timm models only")
        model = _seeded(seed, lambda: ViViTFactorised(VIVIT_B[name])).eval()
        if checkpoint is not None:
            load_checkpoint(model, checkpoint)
        loaded = wrap_model(name, model)
        loaded.checkpoint = str(checkpoint) if checkpoint else None
        return loaded
    if name in PAPER_BACKBONES:
        model = _seeded(seed, lambda: vitdet_b(img_size or 672))
        if checkpoint is not None:
            load_state(model, convert_detectron2(read_state_dict(checkpoint), model), str(checkpoint))
        return LoadedModel(name, "features", model, model, tuple(model.patch_embed.img_size), None,
                           str(checkpoint) if checkpoint else None, VITDET_MEAN, VITDET_STD)
    import timm

    if not timm.is_model(name):
        raise unknown_name("model", name, [*SHIPPED, *PAPER_BACKBONES, *VIVIT_B, *_timm_names()])
    state = read_state_dict(checkpoint) if checkpoint is not None else None
    kwargs = {"img_size": img_size} if img_size else {}
    if state is not None:
        kwargs["num_classes"] = head_classes(state)
    if overlay is not None:
        model = _seeded(seed, lambda: _create_pretrained(name, overlay, kwargs))
    else:
        try:
            model = _seeded(seed, lambda: timm.create_model(name, pretrained=False, **kwargs))
        except (TypeError, ValueError, AssertionError) as err:
            raise ConfigError(f"cannot build {name} with {kwargs}: {err}") from None
    if state is not None:
        load_state(model, state, str(checkpoint))
    vit = adapter_for(model)  # raises for anything tokbench cannot drive
    kind = "classify" if getattr(model, "num_classes", 0) and not vit.needs_all_keys else "features"
    cfg = getattr(model, "pretrained_cfg", None) or {}
    mean, std = tuple(cfg.get("mean", MEAN)), tuple(cfg.get("std", STD))
    return LoadedModel(name, kind, model.eval(), model, tuple(model.patch_embed.img_size), None,
                       str(checkpoint) if checkpoint else None, mean, std)
