"""Synthetic VID spec v2 (``synthvid``): calibration to ImageNet VID val, format, determinism, motion-IoU targets;
and spec v1 (``synthvid-fast``) pinned bit for bit."""

from __future__ import annotations

import hashlib
import json

import numpy as np
import pytest
import torch

from tokbench.data import (
    DETECTION_BENCHMARKS,
    SyntheticDetection,
    check_calibration,
    detection_benchmark,
    detection_frames,
    detection_stats,
    motion_iou,
)
from tokbench.errors import TokbenchError


def _clip_digest(clip) -> str:
    h = hashlib.sha256(clip.frames.numpy().tobytes())
    for target, ids in zip(clip.targets, clip.track_ids, strict=True):
        for array in (target["boxes"], target["labels"], ids):
            h.update(array.numpy().tobytes())
    return h.hexdigest()


# Computed from the v1 generator before v2 existed: v1 must never change.
V1_DIGESTS = {
    ("val", 3, 6, 128, 0, 2): "821d05a888cc0122999939a6be644de302a91d4a654fa13f0d9540e9c01ee0e6",
    ("train", 8, 4, 96, 3, 7): "21f81d137d5902fed9a46868dfc461a6d0ebfd3b3b134a17fb618c11daacb50b",
}
V1_FRAMES_DIGEST = "dfff1d7ffd7644e7d2e59cc37a786c0b8982edd22150123d3d82594d4bfca075"


@pytest.mark.parametrize("key", list(V1_DIGESTS))
def test_v1_clips_are_bit_identical(key):
    split, num_clips, num_frames, size, seed, index = key
    data = SyntheticDetection(split, num_clips=num_clips, num_frames=num_frames, size=size, seed=seed, version=1)
    assert _clip_digest(data[index]) == V1_DIGESTS[key]


def test_v1_training_frames_are_bit_identical():
    h = hashlib.sha256()
    for frame, target in detection_frames("train", n=3, seed=0, size=96, version=1):
        for array in (frame, target["boxes"], target["labels"]):
            h.update(array.numpy().tobytes())
    assert h.hexdigest() == V1_FRAMES_DIGEST


@pytest.fixture(scope="module")
def small_v2() -> SyntheticDetection:
    return SyntheticDetection("val", num_clips=4, num_frames=12, size=128)


def test_v2_is_the_default_and_differs_from_v1(small_v2):
    assert small_v2.version == 2 and small_v2.spec()["spec_version"] == 2
    assert small_v2.spec()["name"] == "synthvid"
    v1 = SyntheticDetection("val", num_clips=4, num_frames=12, size=128, version=1)
    assert v1.spec()["name"] == "synthvid-fast" and not torch.equal(v1[0].frames, small_v2[0].frames)
    json.dumps(small_v2.spec())


def test_v2_clip_format_determinism_and_prefix(small_v2):
    clip = small_v2[1]
    assert clip.frames.shape == (12, 3, 128, 128) and clip.frames.dtype == torch.float32
    assert clip.frames.min() >= 0.0 and clip.frames.max() <= 1.0
    assert clip.clip_id == "synthetic-vid-v2/val/seed0/00001"
    again = SyntheticDetection("val", num_clips=9, num_frames=5, size=128)[1]  # clip count and length don't matter
    assert torch.equal(again.frames, clip.frames[:5])
    for a, b in zip(again.targets, clip.targets[:5], strict=False):
        assert torch.equal(a["boxes"], b["boxes"]) and torch.equal(a["labels"], b["labels"])
    assert not torch.equal(clip.frames, small_v2[2].frames)
    assert not torch.equal(clip.frames, SyntheticDetection("train", num_frames=12, size=128)[1].frames)


def test_targets_carry_motion_iou_of_their_boxes():
    for version in (1, 2):
        data = SyntheticDetection("val", num_clips=3, num_frames=14, size=128, version=version)
        for i in range(len(data)):
            clip = data[i]
            _, per_frame = data.annotations(i)
            expected = motion_iou(np.stack(per_frame))  # [T, M]
            for t, (target, ids) in enumerate(zip(clip.targets, clip.track_ids, strict=True)):
                assert target["motion_iou"].dtype == torch.float32
                assert target["motion_iou"].shape == target["labels"].shape
                np.testing.assert_allclose(target["motion_iou"].numpy(), expected[t, ids.numpy()], rtol=1e-6)
                np.testing.assert_allclose(target["boxes"].numpy(), per_frame[t][ids.numpy()])


def test_v2_boxes_are_sane_and_objects_enter_and_leave():
    data = SyntheticDetection("val", num_clips=24)
    appear_or_vanish = 0
    for i in range(len(data)):
        labels, per_frame = data.annotations(i)
        boxes = np.stack(per_frame)  # [T, M, 4]
        present = ~np.isnan(boxes[..., 0])
        b = boxes[present]
        assert (b >= 0).all() and (b <= data.size).all() and (b[:, 2:] > b[:, :2]).all()
        appear_or_vanish += int((present[0] != present[-1]).any())
    assert appear_or_vanish >= 2


def test_v2_matches_imagenet_vid_on_24_val_clips():
    stats = detection_stats(SyntheticDetection("val", num_clips=24))
    failed = {k: v for k, v in check_calibration(stats).items() if not v["ok"]}
    assert not failed
    # size goes with speed, as in VID
    assert stats["box_area_frac_median_fast"] < stats["box_area_frac_median_medium"] < stats[
        "box_area_frac_median_slow"]
    assert stats["one_object_frame_pct"] > 60 and stats["empty_frame_pct"] < 5


@pytest.mark.slow
def test_v2_matches_imagenet_vid_on_the_full_val_split():
    stats = detection_stats(SyntheticDetection("val"))
    assert stats["num_clips"] == 64
    assert all(v["ok"] for v in check_calibration(stats).values())


def test_v1_is_far_from_imagenet_vid():
    stats = detection_stats(SyntheticDetection("val", num_clips=12, version=1))
    assert stats["fast_pct"] > 60 and stats["box_area_frac_mean"] < 0.06


def test_v2_training_frames_are_deterministic():
    first = list(detection_frames("train", n=3, seed=0, size=96, version=2))
    again = list(detection_frames("train", n=3, seed=0, size=96))
    for (fa, ta), (fb, tb) in zip(first, again, strict=True):
        assert fa.shape == (3, 96, 96) and torch.equal(fa, fb) and torch.equal(ta["boxes"], tb["boxes"])
    v1 = next(iter(detection_frames("train", n=1, seed=0, size=96, version=1)))
    assert not torch.equal(first[0][0], v1[0])


def test_registry_and_version_errors():
    assert set(DETECTION_BENCHMARKS) == {"synthvid", "synthvid-fast"}
    assert detection_benchmark("synthvid-fast", num_clips=1).version == 1
    assert detection_benchmark("synthvid", "test", num_clips=1).split == "test"
    with pytest.raises(TokbenchError, match="did you mean 'synthvid'"):
        detection_benchmark("synthvd")
    with pytest.raises(TokbenchError, match="version 3"):
        SyntheticDetection(version=3)
    from tokbench.data import DetectionSpec

    with pytest.raises(TokbenchError, match="DetectionSpecV2"):
        SyntheticDetection(generator_spec=DetectionSpec())
