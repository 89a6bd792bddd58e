"""Bootstrap intervals over clips: resample weights, vectorised mAP50 against torchmetrics and against the metric
recomputed on resampled (duplicated) clips, per-clip metrics, percentile and paired intervals."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from tokbench import intervals
from tokbench.intervals import (
    DetectionTable,
    excludes_zero,
    interval,
    mean_interval,
    paired,
    ratio,
    resample_weights,
    synthetic_detections,
    top1,
)
from tokbench.metrics import map50, map50_by_motion


def _case(seed: int, clips: int = 3, frames: int = 4) -> tuple[list[list[dict]], list[list[dict]]]:
    """Small random clips (3 classes) with one frame without ground truth and one without detections."""
    preds, targets = synthetic_detections(clips, frames, detections_per_frame=5.0, num_classes=3, seed=seed)
    targets[0][1] = {"boxes": np.zeros((0, 4), np.float32), "labels": np.zeros(0, np.int64),
                     "motion_iou": np.zeros(0)}
    preds[-1][-1] = {"boxes": np.zeros((0, 4), np.float32), "scores": np.zeros(0, np.float32),
                     "labels": np.zeros(0, np.int64)}
    return preds, targets


def _flat(clips: list[list[dict]], keys: tuple[str, ...] | None = None) -> list[dict[str, torch.Tensor]]:
    return [{k: torch.as_tensor(v) for k, v in frame.items() if keys is None or k in keys}
            for clip in clips for frame in clip]


def _torchmetrics_map50(preds: list[list[dict]], targets: list[list[dict]]) -> float:
    return map50(_flat(preds), _flat(targets, ("boxes", "labels")))


def test_resample_weights_are_seeded_multinomial_counts():
    w = resample_weights(7, resamples=50, seed=3)
    assert w.shape == (50, 7) and w.dtype.kind == "i" and (w >= 0).all() and (w.sum(axis=1) == 7).all()
    np.testing.assert_array_equal(w, resample_weights(7, resamples=50, seed=3))
    assert not np.array_equal(w, resample_weights(7, resamples=50, seed=4))
    assert resample_weights(24).shape == (1000, 24)


def test_recall_thresholds_are_torchmetrics():
    from torchmetrics.detection import MeanAveragePrecision

    assert intervals.recall_thresholds().tolist() == MeanAveragePrecision().rec_thresholds


@pytest.mark.parametrize("seed", [0, 1, 2, 3, 4])
def test_unit_weights_equal_torchmetrics_map50(seed):
    preds, targets = _case(seed)
    table = DetectionTable.from_clips([[{k: torch.as_tensor(v) for k, v in f.items()} for f in c] for c in preds],
                                      targets)
    got = table.map50(np.ones((2, len(preds)), dtype=np.int64))
    expected = _torchmetrics_map50(preds, targets)
    assert 0 < expected < 100
    # torchmetrics returns float32: 1e-6 as a fraction is 1e-4 in percent
    np.testing.assert_allclose(got, expected, rtol=0, atol=1e-4)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_unit_weights_equal_map50_by_motion(seed):
    preds, targets = _case(seed, clips=4)
    table = DetectionTable.from_clips(preds, targets)
    ones = np.ones((1, len(preds)))
    expected = map50_by_motion(_flat(preds), _flat(targets))
    got = table.map50_by_motion(ones)
    assert set(got) == set(expected) == {"slow", "medium", "fast"}
    for speed, value in expected.items():
        np.testing.assert_allclose(got[speed], value, rtol=0, atol=1e-9)


def test_a_clip_counted_twice_equals_the_clip_duplicated():
    preds, targets = _case(5, clips=4)
    table = DetectionTable.from_clips(preds, targets)
    weights = np.array([[1, 2, 0, 1]])
    resampled = [c for c, n in enumerate(weights[0]) for _ in range(n)]
    dup_preds, dup_targets = [preds[c] for c in resampled], [targets[c] for c in resampled]
    np.testing.assert_allclose(table.map50(weights), _torchmetrics_map50(dup_preds, dup_targets), atol=1e-4)
    rebuilt = DetectionTable.from_clips(dup_preds, dup_targets)
    ones = np.ones((1, len(resampled)))
    for category in ("all", "slow", "medium", "fast"):
        np.testing.assert_allclose(table.map50(weights, category), rebuilt.map50(ones, category), atol=1e-12)


def test_every_resample_row_equals_its_rebuilt_dataset():
    preds, targets = _case(6, clips=5)
    table = DetectionTable.from_clips(preds, targets)
    weights = resample_weights(5, resamples=12, seed=1)
    got = {category: table.map50(weights, category) for category in table.curves}
    for r, row in enumerate(weights):
        resampled = [c for c, n in enumerate(row) for _ in range(n)]
        rebuilt = DetectionTable.from_clips([preds[c] for c in resampled], [targets[c] for c in resampled])
        for category, values in got.items():
            np.testing.assert_allclose(values[r], rebuilt.map50(np.ones((1, 5)), category)[0], atol=1e-12)


def _det(boxes, scores, labels) -> dict:
    return {"boxes": np.array(boxes, np.float32).reshape(-1, 4), "scores": np.array(scores, np.float32),
            "labels": np.array(labels)}


def _gt(boxes, labels) -> dict:
    return {"boxes": np.array(boxes, np.float32).reshape(-1, 4), "labels": np.array(labels)}


BOX, ELSEWHERE = [0.0, 0.0, 20.0, 20.0], [100.0, 100.0, 120.0, 120.0]


def test_known_answers_and_resamples_without_positives():
    # clip 0: a hit (0.9) on class 0; clip 1: a miss (0.95) of class 0; clip 2: class 1 found, nothing of class 0
    preds = [[_det([BOX], [0.9], [0])], [_det([ELSEWHERE], [0.95], [0])], [_det([BOX], [0.5], [1])]]
    targets = [[_gt([BOX], [0])], [_gt([BOX], [0])], [_gt([BOX], [1])]]
    table = DetectionTable.from_clips(preds, targets)
    weights = np.array([[1, 1, 0], [2, 0, 0], [0, 2, 0], [0, 0, 3], [0, 0, 0]])
    got = table.map50(weights)
    # row 0: FP then TP of 2 positives: precision 1/2 up to recall 1/2 (51 of the 101 thresholds)
    np.testing.assert_allclose(got[:4], [100 * 0.5 * 51 / 101, 100.0, 0.0, 100.0])
    assert np.isnan(got[4])  # no positive at all
    np.testing.assert_allclose(table.map50(np.ones((1, 3))), _torchmetrics_map50(preds, targets), atol=1e-4)
    assert np.isnan(table.map50(np.ones((1, 3)), "fast")).all()  # no motion IoU: no speed categories
    with pytest.raises(ValueError, match="the table has 3"):
        table.map50(np.ones((1, 2)))
    with pytest.raises(ValueError, match="integer counts"):
        table.map50(np.full((1, 3), 0.5))


def test_per_clip_metrics_closed_form():
    weights = np.array([[1, 1, 1], [3, 0, 0], [0, 1, 2]])
    np.testing.assert_allclose(mean_interval(np.array([1.0, 2.0, 6.0]), weights), [3.0, 1.0, 14 / 3])
    np.testing.assert_allclose(ratio(np.array([1, 2, 6]), np.array([2, 2, 8]), weights), [9 / 12, 0.5, 14 / 18])
    assert np.isnan(ratio(np.array([1, 0, 0]), np.array([1, 0, 0]), weights)[2])
    np.testing.assert_allclose(top1(np.array([True, False, True]), weights), [200 / 3, 100.0, 200 / 3])


def test_interval_is_nan_aware_percentiles():
    samples = np.arange(101, dtype=np.float64)
    assert interval(samples) == pytest.approx((2.5, 97.5))
    assert interval(samples, level=0.5) == pytest.approx((25.0, 75.0))
    assert interval(np.append(samples, [np.nan] * 50)) == pytest.approx((2.5, 97.5))
    low, high = interval(np.full(10, np.nan))
    assert np.isnan(low) and np.isnan(high)


def test_paired_difference_over_the_same_resamples():
    rng = np.random.default_rng(0)
    b = rng.normal(50, 5, 1000)  # wide marginal intervals that overlap ...
    a = b + 1.0 + rng.normal(0, 0.1, 1000)  # ... but a beats b on every resample
    assert interval(a)[0] < interval(b)[1]
    diff = paired(a, b)
    assert 0.7 < diff[0] < diff[1] < 1.3 and excludes_zero(diff)
    assert paired(b, b) == (0.0, 0.0) and not excludes_zero(paired(b, b))
    assert not excludes_zero((float("nan"), float("nan")))
    a[:10] = np.nan
    assert paired(a, b) == pytest.approx(diff, abs=0.05)


def test_blocks_of_resamples_give_the_same_values(monkeypatch):
    preds, targets = _case(7, clips=4)
    table = DetectionTable.from_clips(preds, targets)
    weights = resample_weights(4, resamples=40, seed=2)
    whole = table.map50(weights)
    monkeypatch.setattr(intervals, "_BLOCK_ELEMENTS", 50)  # a few rows per block
    np.testing.assert_array_equal(table.map50(weights), whole)
