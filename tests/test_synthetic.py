"""The synthetic video benchmark: determinism, label sanity, split statistics, and that action classes live in
motion rather than in single frames."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from tokbench.data import (
    ACTION_CLASSES,
    DETECTION_CLASSES,
    ActionSpec,
    SyntheticAction,
    SyntheticDetection,
    action_labels,
    detection_frames,
    detection_stats,
)
from tokbench.data.synthetic import SHAPES, TEXTURES, rasterise, reflect
from tokbench.errors import TokbenchError


@pytest.fixture(scope="module")
def small_detection() -> SyntheticDetection:
    return SyntheticDetection("val", num_clips=6, num_frames=6, size=128, version=1)


@pytest.fixture(scope="module")
def small_action() -> SyntheticAction:
    return SyntheticAction("val", num_clips=4, num_frames=5, size=96)


# --- shared pieces -----------------------------------------------------------------------------------------------


def test_reflect_bounces_between_walls():
    x = np.array([0.0, 5.0, 10.0, 15.0, 20.0, 25.0, -5.0])
    np.testing.assert_allclose(reflect(x, 0.0, 10.0), [0, 5, 10, 5, 0, 5, 5])


def test_positive_angle_turns_clockwise_on_screen():
    # The triangle's apex points up (-y) at angle 0 and its base lies half a radius below the centre; a quarter
    # turn clockwise on screen points the apex right (+x).
    def extent(angle):  # (left, top, right, bottom) of the mask relative to the centre, in radii
        stamp = rasterise(SHAPES.index("triangle"), TEXTURES.index("flat"), np.ones(3), 50.0, 50.0, 20.0, angle)
        ys, xs = np.nonzero(stamp.mask)
        return (np.array([xs.min(), ys.min(), xs.max() + 1, ys.max() + 1]) + [stamp.x0, stamp.y0] * 2 - 50) / 20

    np.testing.assert_allclose(extent(0.0)[[1, 3]], [-1.0, 0.5], atol=0.1)
    np.testing.assert_allclose(extent(np.pi / 2)[[0, 2]], [-0.5, 1.0], atol=0.1)


def test_unknown_split_suggests_close_name():
    with pytest.raises(TokbenchError, match="did you mean 'val'"):
        SyntheticDetection("vall")


# --- detection ---------------------------------------------------------------------------------------------------


def test_detection_clip_format(small_detection):
    clip = small_detection[0]
    T, S = small_detection.num_frames, small_detection.size
    assert clip.frames.shape == (T, 3, S, S) and clip.frames.dtype == torch.float32
    assert clip.frames.min() >= 0.0 and clip.frames.max() <= 1.0
    assert len(clip.targets) == len(clip.track_ids) == T
    for target, ids in zip(clip.targets, clip.track_ids, strict=True):
        assert set(target) == {"boxes", "labels", "motion_iou"}
        assert target["boxes"].dtype == torch.float32 and target["boxes"].shape[1] == 4
        assert target["labels"].dtype == torch.int64
        assert len(target["labels"]) == len(target["boxes"]) == len(ids)
    assert clip.clip_id == "synthetic-vid/val/seed0/00000"  # spec v1 (synthvid-fast); v2 in test_synthvid_v2.py


def test_detection_is_deterministic_and_splits_differ(small_detection):
    a, b = small_detection[1], SyntheticDetection("val", num_clips=6, num_frames=6, size=128, version=1)[1]
    assert torch.equal(a.frames, b.frames)
    for ta, tb in zip(a.targets, b.targets, strict=True):
        assert torch.equal(ta["boxes"], tb["boxes"]) and torch.equal(ta["labels"], tb["labels"])
    assert not torch.equal(a.frames, small_detection[2].frames)
    val0 = small_detection[0].frames
    assert not torch.equal(val0, SyntheticDetection("train", num_frames=6, size=128, version=1)[0].frames)
    assert not torch.equal(val0, SyntheticDetection("val", num_frames=6, size=128, seed=1, version=1)[0].frames)


def test_shorter_clip_is_prefix_of_longer(small_detection):
    longer = SyntheticDetection("val", num_clips=6, num_frames=9, size=128, version=1)[3]
    shorter = small_detection[3]
    assert torch.equal(longer.frames[:6], shorter.frames)


def test_detection_index_out_of_range(small_detection):
    with pytest.raises(IndexError):
        small_detection[6]
    assert len(list(small_detection)) == 6


def test_detection_boxes_are_sane():
    ds = SyntheticDetection("val", num_clips=20, version=1)
    for i in range(len(ds)):
        labels, per_frame = ds.annotations(i)
        assert 1 <= len(labels) <= 4
        assert ((labels >= 0) & (labels < len(DETECTION_CLASSES))).all()
        seen = np.zeros(len(labels), dtype=bool)
        for boxes in per_frame:
            present = ~np.isnan(boxes[:, 0])
            seen |= present
            b = boxes[present]
            assert (b >= 0).all() and (b[:, [0, 2]] <= ds.size).all() and (b[:, [1, 3]] <= ds.size).all()
            assert (b[:, 2] > b[:, 0]).all() and (b[:, 3] > b[:, 1]).all()
        assert seen.any()


def test_clip_targets_match_annotations(small_detection):
    clip = small_detection[4]
    labels, per_frame = small_detection.annotations(4)
    for target, ids, boxes in zip(clip.targets, clip.track_ids, per_frame, strict=True):
        np.testing.assert_allclose(target["boxes"].numpy(), boxes[ids.numpy()])
        assert torch.equal(target["labels"], torch.from_numpy(labels[ids.numpy()]))


@pytest.mark.parametrize("version", [1, 2])
def test_boxes_enclose_object_pixels(version):
    # Objects are far more saturated than the muted background: inside boxes the mean saturation is higher.
    ds = SyntheticDetection("val", num_clips=3, num_frames=2, size=160, version=version)
    for clip in ds:
        frame, boxes = clip.frames[0], clip.targets[0]["boxes"].round().long()
        saturation = frame.max(dim=0).values - frame.min(dim=0).values
        inside = torch.zeros_like(saturation, dtype=torch.bool)
        for x1, y1, x2, y2 in boxes.tolist():
            inside[y1:y2, x1:x2] = True
        assert saturation[inside].mean() > saturation[~inside].mean() + 0.1


def test_detection_stats_match_the_specification():
    stats = detection_stats(SyntheticDetection("val", num_clips=20, version=1))
    assert stats["coverage_frac"] <= 0.15
    assert 0.5 <= stats["center_disp_patches_per_stride"] <= 1.5
    assert stats["stride_frames"] == 4 and stats["patch_px"] == 16
    assert 1.0 <= stats["objects_per_frame"] <= 4.0
    assert set(stats["class_histogram"]) == set(DETECTION_CLASSES)
    assert min(stats["class_histogram"].values()) > 0
    json.dumps(stats)


def test_detection_frames_are_deterministic_and_independent():
    first = list(detection_frames("train", n=3, seed=0, size=96, version=1))
    again = list(detection_frames("train", n=3, seed=0, size=96, version=1))
    for (fa, ta), (fb, tb) in zip(first, again, strict=True):
        assert fa.shape == (3, 96, 96) and fa.dtype == torch.float32
        assert torch.equal(fa, fb) and torch.equal(ta["boxes"], tb["boxes"])
    assert not torch.equal(first[0][0], first[1][0])
    val = next(iter(detection_frames("val", n=1, seed=0, size=96, version=1)))
    assert not torch.equal(first[0][0], val[0])


def test_spec_is_json_ready(small_detection, small_action):
    for ds in (small_detection, small_action):
        spec = json.loads(json.dumps(ds.spec()))
        assert spec["split"] == "val" and spec["num_clips"] == len(ds)
        assert spec["class_names"] == list(ds.class_names)
        assert spec["size"] == ds.size and spec["num_frames"] == ds.num_frames


# --- action ------------------------------------------------------------------------------------------------------


def test_action_clip_format_and_determinism(small_action):
    clip = small_action[0]
    assert clip.frames.shape == (5, 3, 96, 96) and clip.frames.dtype == torch.float32
    assert clip.frames.min() >= 0.0 and clip.frames.max() <= 1.0
    assert clip.label == small_action.label(0) and 0 <= clip.label < len(ACTION_CLASSES)
    assert torch.equal(clip.frames, SyntheticAction("val", num_clips=4, num_frames=5, size=96)[0].frames)
    assert not torch.equal(clip.frames, small_action[1].frames)
    assert not torch.equal(clip.frames, SyntheticAction("train", num_frames=5, size=96)[0].frames)


def test_action_classes_are_balanced():
    K = len(ACTION_CLASSES)
    counts = torch.bincount(action_labels(SyntheticAction("val", num_clips=8 * K)), minlength=K)
    assert (counts == 8).all()
    counts = torch.bincount(action_labels(SyntheticAction("train", num_clips=100)), minlength=K)
    assert counts.max() - counts.min() <= 1
    assert action_labels(SyntheticAction("val", num_clips=K)).tolist() != list(range(K))  # order is shuffled


def _nearest_centroid_loo_accuracy(features: np.ndarray, labels: np.ndarray) -> float:
    """Leave-one-out accuracy of a nearest-class-mean classifier on standardised features ``[N, F]``."""
    z = (features - features.mean(0)) / (features.std(0) + 1e-9)
    hits = 0
    for i in range(len(z)):
        rest = np.arange(len(z)) != i
        classes = np.unique(labels[rest])
        means = np.stack([z[rest & (labels == c)].mean(0) for c in classes])
        hits += classes[np.argmin(((means - z[i]) ** 2).sum(1))] == labels[i]
    return hits / len(z)


def test_action_middle_frame_says_nothing_but_motion_does():
    ds = SyntheticAction("val", num_clips=80, num_frames=5)
    labels, still, motion = [], [], []
    for i in range(len(ds)):
        clip = ds[i]
        middle = clip.frames[2].flatten(1)  # [3, H * W]
        still.append(torch.cat([middle.mean(1), middle.std(1)]).numpy())
        masks = ds.object_masks(i)  # [T, H, W]
        ys, xs = np.nonzero(masks[0])
        ye, xe = np.nonzero(masks[-1])
        motion.append([xe.mean() - xs.mean(), ye.mean() - ys.mean(), np.log(len(xe) / len(xs))])
        labels.append(clip.label)
    labels = np.array(labels)
    chance = 1 / len(ACTION_CLASSES)
    assert _nearest_centroid_loo_accuracy(np.array(still), labels) < 2 * chance
    # Motion of the object mask separates the six translation and scale classes (rotation keeps both still).
    merged = np.where(labels == ACTION_CLASSES.index("rotate_ccw"), ACTION_CLASSES.index("rotate_cw"), labels)
    assert _nearest_centroid_loo_accuracy(np.array(motion), merged) > 0.9


def test_action_frames_at_and_motion_match_the_rendered_clip(small_action):
    clip = small_action[2]
    assert torch.equal(small_action.frames_at(2, [3, 0]), clip.frames[[3, 0]])
    motion, masks = small_action.motion(2), small_action.object_masks(2)
    edge = small_action.size - 1
    inside = [t for t in range(small_action.num_frames)
              if masks[t].any() and not (masks[t][0].any() or masks[t][edge].any() or masks[t][:, 0].any()
                                         or masks[t][:, edge].any())]
    assert inside  # the object is fully in view in some frame
    for t in inside:
        ys, xs = np.nonzero(masks[t])
        assert abs(xs.mean() - motion["centre"][t][0]) < 0.35 * motion["radius"][t]
        assert abs(ys.mean() - motion["centre"][t][1]) < 0.35 * motion["radius"][t]
    steps = np.diff(motion["centre"], axis=0)
    assert np.allclose(steps, motion["velocity"]) and np.allclose(np.diff(motion["angle"]), motion["spin"])
    assert np.allclose(np.diff(np.log(motion["radius"])), motion["growth"])


@pytest.mark.parametrize("shape", range(len(SHAPES)))
def test_orientation_marker_points_along_the_object_angle(shape):
    colour, marker = np.array([0.9, 0.3, 0.1]), np.array([0.1, 0.7, 0.9])
    for angle in (0.0, 1.0, 2.5, -2.0):
        stamp = rasterise(shape, TEXTURES.index("flat"), colour, 50.0, 40.0, 20.0, angle, marker)
        hand = stamp.mask & np.all(np.abs(stamp.rgb - marker[:, None, None]) < 1e-6, axis=0)
        assert hand.sum() > 20
        ys, xs = np.nonzero(hand)
        dx, dy = xs.mean() + stamp.x0 + 0.5 - 50.0, ys.mean() + stamp.y0 + 0.5 - 40.0
        assert abs(np.arctan2(dy, dx) - angle + np.pi) % (2 * np.pi) - np.pi == pytest.approx(0.0, abs=0.1)
        plain = rasterise(shape, TEXTURES.index("flat"), colour, 50.0, 40.0, 20.0, angle)
        assert np.array_equal(plain.mask, stamp.mask) and not np.any(np.all(plain.rgb == marker[:, None, None], 0))


def test_action_objects_carry_the_marker_unless_switched_off():
    on = SyntheticAction("val", num_clips=1, num_frames=3, size=96)
    off = SyntheticAction("val", num_clips=1, num_frames=3, size=96,
                          generator_spec=ActionSpec(orientation_marker=False))
    differ = (on[0].frames != off[0].frames).any(dim=1)  # [T, H, W]
    masks = torch.from_numpy(on.object_masks(0))
    assert differ.any() and not (differ & ~masks).any()  # only object pixels change
    assert on.spec()["spec_version"] == 2 and on.spec()["orientation_marker"] is True
