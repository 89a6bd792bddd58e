"""Clips in lockstep: running B clips as one batch gives every clip the record it gets alone (kept sets, detections,
logits and frame kinds exactly; classification / feature fidelity sums to float rounding; timings aside), for
every policy; a clip whose batch fails reruns alone so the
error lands on it; clips of different lengths run in separate batches."""

from __future__ import annotations

import pytest
import torch

from tokbench.config import MethodConfig
from tokbench.data.synthetic import Clip
from tokbench.jobs import resolve
from tokbench.models.detector import DetectorSpec, ViTDetector
from tokbench.models.zoo import LoadedModel, load_model
from tokbench.pipeline import stream
from tokbench.policies import POLICIES
from tokbench.tasks import ClassificationTask

TIMING = {"wall_s", "step_ms", "clip_batch", "traceback", "reused"}  # bookkeeping, not results


def _clips(num: int, frames: int = 5, size: int = 64, lengths: dict[int, int] | None = None) -> list[Clip]:
    gen = torch.Generator().manual_seed(0)
    clips = []
    for c in range(num):
        t = (lengths or {}).get(c, frames)
        box = torch.tensor([[8.0, 8.0, 40.0, 32.0]])
        targets = [{"boxes": box + i, "labels": torch.tensor([c % 3])} for i in range(t)]
        clips.append(Clip(torch.rand(t, 3, size, size, generator=gen), targets=targets, clip_id=f"c{c}"))
    return clips


def _configs(kind: str) -> list[MethodConfig]:
    names = [n for n, p in POLICIES.items() if p.applies_to(kind)]
    configs = [MethodConfig.from_preset("default", policy=n, keep_ratio=0.5, window=1, reset_every=3, seed=0)
               for n in names]
    return configs + [MethodConfig.from_preset("default", policy="random", keep_ratio=0.5, seed=1)]


def _strip(value):
    if isinstance(value, dict):
        return {k: _strip(v) for k, v in value.items() if k not in TIMING}
    if isinstance(value, list):
        return [_strip(v) for v in value]
    return value


def _assert_same(batched: dict, alone: dict, rel: float = 0.0) -> None:
    """Equal records, timings aside; floats within ``rel`` (0: exactly)."""
    flat_b, flat_a = _flatten(_strip(batched)), _flatten(_strip(alone))
    assert flat_b.keys() == flat_a.keys()
    for key, value in flat_a.items():
        if isinstance(value, float) and rel:
            assert flat_b[key] == pytest.approx(value, rel=rel, abs=1e-6), key
        else:
            assert flat_b[key] == value, key


def _flatten(value, prefix: tuple = ()) -> dict:
    if isinstance(value, dict):
        return {k: v for key, item in value.items() for k, v in _flatten(item, (*prefix, key)).items()}
    if isinstance(value, list):
        return {k: v for i, item in enumerate(value) for k, v in _flatten(item, (*prefix, i)).items()}
    return {prefix: value}


def _records(loaded: LoadedModel, data: list[Clip], clip_batch: int, sampling=(1, 2), **kwargs) -> dict:
    jobs = [resolve(loaded, config, s, {}) for config in _configs(loaded.kind) for s in sampling]
    assert not [j.error for j in jobs if j.error]
    out: dict[tuple[str, int], dict] = {}
    stream(loaded, data, jobs, range(len(data)), clip_batch=clip_batch,
           emit=lambda r: out.__setitem__((r["config_id"], r["clip"]), r), **kwargs)
    return out


@pytest.fixture(scope="module")
def tiny_detector() -> LoadedModel:
    torch.manual_seed(0)
    # the benchmark detector's head on its 20 x 20 token grid: for some maps and widths (4 x 4, 16 channels) oneDNN
    # picks a convolution whose last bits depend on the batch; the benchmark's head is batch-invariant
    spec = DetectorSpec(num_classes=3, img_size=160, patch_size=8, embed_dim=192, depth=2, num_heads=3, head_dim=128)
    model = ViTDetector(spec).eval()
    return LoadedModel("tiny-det", "detect", model, model.backbone, (160, 160))


def test_detection_records_do_not_depend_on_the_clip_batch(tiny_detector):
    data = _clips(4, size=160, lengths={2: 4})  # clip 2 is shorter: it cannot share the others' batch
    alone, batched = _records(tiny_detector, data, 1), _records(tiny_detector, data, 3)
    assert len(alone) == 4 * 2 * len(_configs("detect"))
    assert _strip(batched) == _strip(alone)
    assert {f["clip_batch"] for r in batched.values() for f in r["frames"]} == {1, 2}  # clips 0, 1 | 2 | 3
    assert not any(r.get("error") for r in batched.values())
    kept = {r["frames"][1]["kept"] is not None for r in batched.values()}
    assert kept == {True, False}  # pruned and dense configurations both ran


@pytest.mark.parametrize("kind", ["classify", "features"])
def test_fidelity_records_do_not_depend_on_the_clip_batch(kind):
    loaded = load_model("vit_tiny_patch16_224", img_size=64, seed=0)
    if kind == "features":
        loaded = LoadedModel("tiny-features", "features", loaded.model, loaded.backbone, (64, 64))
    data = _clips(3, frames=4)
    alone, batched = _records(loaded, data, 1), _records(loaded, data, 3)
    # kept sets, frame kinds and agreement exactly; KL and cosine sums to float rounding: a batched GEMM may sum
    # in another order than a batch of one (measured: 3e-7 absolute on a KL sum of 0.016)
    _assert_same(batched, alone, rel=1e-5)
    field = "agree" if kind == "classify" else "cos_tokens_sum"
    assert sum(field in r for r in batched.values()) == len(batched) - 2 * len(data)  # all but dense
    assert {f["clip_batch"] for r in batched.values() for f in r["frames"]} == {3}


def test_resumed_clips_form_batches_of_what_is_left(tiny_detector):
    data = _clips(3, frames=3, size=160)
    whole = _records(tiny_detector, data, 3, sampling=(1,))
    done = {key for key in whole if key[1] != 1}  # only clip 1 is left
    left = _records(tiny_detector, data, 3, sampling=(1,), done=done)
    assert set(left) == {key for key in whole if key[1] == 1}
    assert _strip(left) == _strip({k: whole[k] for k in left})


class _FailingTask(ClassificationTask):
    """Raises on a batch holding a non-finite sample (a clip whose frames are NaN)."""

    def head(self, vit, tokens):
        if not torch.isfinite(tokens).all():
            raise ValueError("non-finite tokens")
        return super().head(vit, tokens)


class _FailingModel(LoadedModel):
    def task(self, config):
        return _FailingTask()


def test_a_failing_clip_takes_only_itself_down():
    base = load_model("vit_tiny_patch16_224", img_size=64, seed=0)
    loaded = _FailingModel("failing", "classify", base.model, base.backbone, (64, 64))
    data = _clips(4, frames=3)
    data[1].frames[:] = float("nan")
    alone, batched = _records(loaded, data, 1, sampling=(1,)), _records(loaded, data, 4, sampling=(1,))
    _assert_same(batched, alone, rel=1e-5)
    assert {c for (_, c), r in batched.items() if r.get("error")} == {1}
    assert {c for (_, c), r in batched.items() if not r.get("error")} == {0}  # a failed job runs no further clip
    with pytest.raises(ValueError, match="non-finite"):
        _records(loaded, data, 4, sampling=(1,), strict=True)
