"""The vectorised matching of ``DetectionTable.from_clips`` against the per-frame, per-class loop it replaced
(``intervals._from_clips_loop``, ``tokbench.metrics._match`` per group): the same curves bit for bit."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from tokbench import intervals
from tokbench.intervals import DetectionTable, resample_weights, synthetic_detections

FIELDS = ("scores", "outcome", "clip", "positives", "tp_counts", "fp_counts")


def _assert_same(preds: list[list[dict]], targets: list[list[dict]], max_detections: int = 100) -> DetectionTable:
    """Build both tables and compare every curve field (values and dtype) and the bootstrap mAP50s exactly."""
    got = DetectionTable.from_clips(preds, targets, max_detections)
    expected = intervals._from_clips_loop(preds, targets, max_detections)
    assert got.num_clips == expected.num_clips
    assert list(got.curves) == list(expected.curves)
    for category, curves in expected.curves.items():
        assert len(got.curves[category]) == len(curves)
        for new, old in zip(got.curves[category], curves, strict=True):
            for field in FIELDS:
                a, b = getattr(new, field), getattr(old, field)
                assert a.dtype == b.dtype and np.array_equal(a, b), (category, field)
    if got.num_clips:
        weights = np.concatenate([np.ones((1, got.num_clips), np.int64),
                                  resample_weights(got.num_clips, resamples=50, seed=1)])
        for category in expected.curves:
            assert np.array_equal(got.map50(weights, category), expected.map50(weights, category), equal_nan=True)
        by_motion, expected_by_motion = got.map50_by_motion(weights), expected.map50_by_motion(weights)
        assert list(by_motion) == list(expected_by_motion)
        for speed, values in expected_by_motion.items():
            assert np.array_equal(by_motion[speed], values, equal_nan=True)
    return got


def _no_detections() -> dict:
    return {"boxes": np.zeros((0, 4), np.float32), "scores": np.zeros(0, np.float32), "labels": np.zeros(0, np.int64)}


def _no_boxes() -> dict:
    return {"boxes": np.zeros((0, 4), np.float32), "labels": np.zeros(0, np.int64), "motion_iou": np.zeros(0)}


@pytest.mark.parametrize("seed", [0, 1, 2, 3, 4, 5])
def test_synthetic_rows_equal_the_loop(seed):
    preds, targets = synthetic_detections(6, 8, detections_per_frame=10.0 + 4 * seed, gt_per_frame=1.5 + seed / 2,
                                          seed=seed)
    table = _assert_same(preds, targets)
    assert set(table.curves) == {"all", "slow", "medium", "fast"} and all(table.curves.values())


@pytest.mark.parametrize("max_detections", [0, 1, 2, 3])
def test_more_detections_than_max_detections(max_detections):
    preds, targets = synthetic_detections(4, 6, detections_per_frame=30.0, gt_per_frame=4.0, num_classes=2, seed=7)
    assert max(np.bincount(p["labels"]).max() for clip in preds for p in clip) > 3 * max_detections
    _assert_same(preds, targets, max_detections)


def test_empty_frames_and_a_clip_without_frames():
    preds, targets = synthetic_detections(5, 6, detections_per_frame=8.0, num_classes=3, seed=11)
    targets[0][1] = _no_boxes()  # no ground truth
    preds[0][2] = _no_detections()  # no detection
    targets[1][0], preds[1][0] = _no_boxes(), _no_detections()  # neither
    preds[2], targets[2] = [], []  # a clip without frames
    targets[3][3]["motion_iou"][:] = np.nan  # boxes in no speed category
    _assert_same(preds, targets)


def test_clips_without_frames_or_detections():
    _assert_same([[], []], [[], []])
    preds, targets = synthetic_detections(3, 4, seed=2)
    _assert_same([[_no_detections() for _ in clip] for clip in preds], targets)
    _assert_same(preds, [[_no_boxes() for _ in clip] for clip in targets])


def test_targets_without_motion_iou_and_torch_inputs():
    preds, targets = synthetic_detections(4, 5, detections_per_frame=12.0, seed=3)
    plain = [[{k: t[k] for k in ("boxes", "labels")} for t in clip] for clip in targets]
    table = _assert_same(preds, plain)
    assert list(table.curves) == ["all"]
    as_torch = [[{k: torch.as_tensor(v) for k, v in f.items()} for f in clip] for clip in preds]
    _assert_same(as_torch, [[{k: torch.as_tensor(v) for k, v in t.items()} for t in clip] for clip in targets])


def test_exact_iou_ties_and_tied_scores():
    # a detection of ``box`` has IoU exactly 0.5 with ``top`` and ``bottom`` (its halves) and 1 with ``box``;
    # ``near_top`` overlaps ``top`` only: it finds ``top`` taken when the tie went to the first box
    box, top, bottom = [0.0, 0.0, 20.0, 20.0], [0.0, 0.0, 20.0, 10.0], [0.0, 10.0, 20.0, 20.0]
    near_top = [0.0, 0.0, 20.0, 12.0]

    def det(boxes, scores, labels):
        return {"boxes": np.array(boxes, np.float32).reshape(-1, 4), "scores": np.array(scores, np.float32),
                "labels": np.array(labels, np.int64)}

    def gt(boxes, labels, miou):
        return {"boxes": np.array(boxes, np.float32).reshape(-1, 4), "labels": np.array(labels, np.int64),
                "motion_iou": np.array(miou, np.float64)}

    preds = [[det([box, box, box], [0.9, 0.9, 0.5], [0, 0, 0]), det([box, box], [0.7, 0.7], [1, 1])],
             [det([box, box, box], [0.6, 0.6, 0.6], [0, 0, 1]), det([box, near_top], [0.8, 0.3], [0, 0])]]
    targets = [[gt([top, bottom], [0, 0], [0.95, 0.5]), gt([box, box], [1, 1], [0.8, 0.95])],
               [gt([box, top, bottom], [0, 0, 1], [np.nan, 0.95, 0.6]), gt([top, bottom], [0, 0], [0.5, 0.5])]]
    table = _assert_same(preds, targets)
    # class 0 by score: 0.9, 0.9, 0.8, 0.6, 0.6, 0.5, 0.3; slow: positives (top in clip 1) before ignored boxes
    assert table.curves["all"][0].outcome.tolist() == [1, 1, 1, 1, 1, 0, 0]
    assert table.curves["slow"][0].outcome.tolist() == [1, -1, -1, 1, -1, 0, 0]
    for max_detections in (1, 2):
        _assert_same(preds, targets, max_detections)


def test_mixed_dtypes_fall_back_to_the_loop():
    preds, targets = synthetic_detections(3, 4, seed=4)
    preds[1][2] = {k: v.astype(np.float64) if v.dtype == np.float32 else v for k, v in preds[1][2].items()}
    _assert_same(preds, targets)
