"""Training the embedded benchmark's models on full frames (the method itself is training-free).

``train_detector`` / ``train_action`` are seeded and write fp16 safetensors plus a JSON card (training command,
seed, data specification, dense validation metric, tokbench version). The CLI wraps them with progress bars.
"""

from __future__ import annotations

import itertools
import json
import math
import time
from collections.abc import Callable
from dataclasses import asdict
from functools import partial
from pathlib import Path

import torch
from safetensors.torch import save_file

import tokbench
from tokbench.data import SyntheticAction, SyntheticDetection, detection_frames
from tokbench.metrics import map50, top1
from tokbench.models.action import ActionSpec, ViViTFactorised
from tokbench.models.action import normalize as action_normalize
from tokbench.models.action_loss import AuxHeads, action_loss, frame_targets
from tokbench.models.centre_loss import centre_targets, detection_loss
from tokbench.models.detector import DetectorSpec, ViTDetector, decode
from tokbench.models.detector import normalize as det_normalize

Progress = Callable[[int, int, dict[str, float]], None]


def _schedule(step: int, total: int, warmup: int) -> float:
    if step < warmup:
        return (step + 1) / warmup
    return 0.5 * (1 + math.cos(math.pi * (step - warmup) / max(1, total - warmup)))


def _batches(iterator, batch: int):
    while chunk := list(itertools.islice(iterator, batch)):
        yield chunk


def _save(out: Path, name: str, model: torch.nn.Module, card: dict, evaluate, check_clips: int) -> dict:
    """Write fp16 safetensors and the card; reload what was written and add the card's ``check_metric``: the
    metric of the shipped (fp16) weights on the first ``check_clips`` val clips, which tests reproduce."""
    from tokbench.models import load_trained

    out.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().to(torch.float16).contiguous() for k, v in model.state_dict().items()}
    path = out / f"{name}.safetensors"
    save_file(state, str(path))
    card_path = out / f"{name}.json"
    card_path.write_text(json.dumps(card, indent=2) + "\n")
    card["check_metric"] = {
        "name": card["val_metric"]["name"],
        "value": round(evaluate(load_trained(path), check_clips), 2),
        "clips": check_clips,
        "weights": "fp16 as shipped",
        "purpose": "tests/test_shipped.py reproduces this",
    }
    card_path.write_text(json.dumps(card, indent=2) + "\n")
    return card


@torch.no_grad()
def evaluate_detector(model: ViTDetector, num_clips: int, num_frames: int = 32, seed: int = 0,
                      version: int = 2) -> float:
    """Dense mAP50 (percent) on the first ``num_clips`` val clips of synthvid spec ``version`` (2: ``synthvid``,
    1: ``synthvid-fast``)."""
    model.eval()
    data = SyntheticDetection("val", num_clips=num_clips, num_frames=num_frames, seed=seed, version=version)
    preds, targets = [], []
    for clip in data:
        for chunk in torch.split(torch.arange(clip.frames.shape[0]), 16):
            out = model(det_normalize(clip.frames[chunk]))
            preds += decode(out, model.spec.patch_size, model.spec.max_detections)
        targets += clip.targets
    return map50(preds, targets)


def _fit(model: torch.nn.Module, batches, steps: int, lr: float, loss_fn, progress: Progress | None) -> float:
    """AdamW (weight decay 0.05), 5 % linear warm-up then cosine, grad-norm clip 1; returns minutes spent.

    ``loss_fn(chunk)`` returns a dict of scalar losses whose ``"loss"`` is optimised.
    """
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.05)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: _schedule(s, steps, max(1, steps // 20)))
    start = time.perf_counter()
    for step, chunk in enumerate(batches):
        losses = loss_fn(chunk)
        opt.zero_grad(set_to_none=True)
        losses["loss"].backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sched.step()
        if progress:
            progress(step + 1, steps, {k: float(v.detach()) for k, v in losses.items()})
    return (time.perf_counter() - start) / 60


def _card(name: str, spec, *, command: str, seed: int, steps: int, batch: int, lr: float, minutes: float,
          **data) -> dict:
    return {
        "model": name,
        "architecture": asdict(spec),
        "command": command,
        "seed": seed,
        "steps": steps,
        "batch": batch,
        "lr": lr,
        "train_minutes": round(minutes, 1),
        **data,
        "tokbench_version": tokbench.__version__,
        "torch_version": torch.__version__,
        "trained_on": "full frames (no token dropping)",
    }


DETECTOR_NAMES = {2: "synthvid-det", 1: "synthvid-fast-det"}  # spec version -> shipped detector trained on it


def train_detector(
    *, steps: int, batch: int = 16, lr: float = 5e-4, seed: int = 0, val_clips: int = 50, out: Path,
    command: str, progress: Progress | None = None, version: int = 2,
) -> dict:
    """Train the benchmark detector from scratch on independent synthetic frames of spec ``version`` (2:
    ``synthvid``, 1: ``synthvid-fast``), validated on that version's val clips; returns the card."""
    torch.manual_seed(seed)
    spec = DetectorSpec()
    model = ViTDetector(spec).train()
    grid = tuple(model.backbone.patch_embed.grid_size)

    def loss_fn(chunk):
        images = det_normalize(torch.stack([f for f, _ in chunk]))
        target = centre_targets([t for _, t in chunk], grid, spec.patch_size, spec.num_classes)
        return detection_loss(model(images), target)

    frames = detection_frames("train", n=steps * batch, seed=seed, size=spec.img_size, version=version)
    minutes = _fit(model, _batches(frames, batch), steps, lr, loss_fn, progress)
    evaluate = partial(evaluate_detector, version=version)
    metric = evaluate(model, val_clips, seed=0)
    name = DETECTOR_NAMES[version]
    card = _card(
        name, spec, command=command, seed=seed, steps=steps, batch=batch, lr=lr, minutes=minutes,
        train_data={"generator": "detection_frames", "split": "train", "frames": steps * batch,
                    "spec_version": version},
        val_data=SyntheticDetection("val", num_clips=val_clips, version=version).spec(),
        val_metric={"name": "map50", "value": round(metric, 2), "clips": val_clips, "frames_per_clip": 32,
                    "mode": "dense, every frame"},
    )
    return _save(out, name, model, card, evaluate, check_clips=6)


@torch.no_grad()
def evaluate_action(model: ViViTFactorised, num_clips: int, seed: int = 0) -> float:
    """Dense top-1 (percent) on the first ``num_clips`` val clips."""
    model.eval()
    data = SyntheticAction("val", num_clips=num_clips, seed=seed, num_frames=model.spec.num_frames)
    logits, labels = [], []
    for clip in data:
        logits.append(model(action_normalize(clip.frames).unsqueeze(0)))
        labels.append(clip.label)
    return top1(torch.cat(logits), torch.tensor(labels))


def train_action(
    *, steps: int, batch: int = 8, lr: float = 5e-4, seed: int = 0, val_clips: int = 64, out: Path,
    command: str, progress: Progress | None = None, aux_weight: float = 1.0, check_clips: int = 16,
) -> dict:
    """Train the factorised action model from scratch on synthetic motion clips; returns the card.

    The loss is clip cross-entropy plus per-frame auxiliary targets (``models.action_loss``), all on full frames.
    """
    torch.manual_seed(seed)
    spec = ActionSpec()
    model = ViViTFactorised(spec).train()
    aux = AuxHeads(spec.embed_dim)
    data = SyntheticAction("train", num_clips=steps * batch, seed=seed, num_frames=spec.num_frames)

    def loss_fn(indices):
        clips = action_normalize(torch.stack([data[i].frames for i in indices]))
        labels = torch.tensor([data.label(i) for i in indices])
        state, coverage = (torch.stack(parts) for parts in zip(
            *(frame_targets(data, i, spec.patch_size) for i in indices), strict=True))
        return action_loss(model, aux, clips, labels, state, coverage, aux_weight)

    trained = torch.nn.ModuleDict({"model": model, "aux": aux})
    minutes = _fit(trained, _batches(iter(range(len(data))), batch), steps, lr, loss_fn, progress)
    metric = evaluate_action(model, val_clips)
    card = _card(
        "synthaction-vivit", spec, command=command, seed=seed, steps=steps, batch=batch, lr=lr, minutes=minutes,
        train_data={"generator": "SyntheticAction", "split": "train", "clips": steps * batch},
        loss={"clip": "cross-entropy, label smoothing 0.1", "aux_weight": aux_weight,
              "per_frame_aux": "class-token state regression (centre, log radius, orientation), class-token "
                               "attention towards the object (blocks 1..), patch objectness; training-only heads"},
        val_data=SyntheticAction("val", num_clips=val_clips).spec(),
        val_metric={"name": "top1", "value": round(metric, 2), "clips": val_clips, "mode": "dense"},
    )
    return _save(out, "synthaction-vivit", model, card, evaluate_action, check_clips)
