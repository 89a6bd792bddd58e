"""Motion IoU, FGFA speed categories, split box statistics and mAP50 by motion speed, on hand-made answers."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from tokbench.data.motion import (
    VID_VAL_REFERENCE,
    box_stats,
    boxes_by_track,
    check_calibration,
    motion_iou,
    speed_category,
)
from tokbench.metrics import map50, map50_by_motion

NAN = [np.nan] * 4


def test_translating_box_has_closed_form_motion_iou():
    # A 10 x 10 box moving 1 px/frame in x: IoU at lag k is (10 - k) / (10 + k).
    T = 3
    boxes = np.array([[[t, 0.0, t + 10.0, 10.0]] for t in range(T)])  # [T, 1, 4]
    miou = motion_iou(boxes)
    lag = {k: (10 - k) / (10 + k) for k in (1, 2)}
    np.testing.assert_allclose(miou[:, 0], [(lag[1] + lag[2]) / 2, lag[1], (lag[1] + lag[2]) / 2])


def test_motion_iou_window_is_ten_frames_each_side():
    T = 25
    boxes = np.array([[[t, 0.0, t + 100.0, 100.0]] for t in range(T)], dtype=np.float64)
    expected = np.mean([(100 - k) / (100 + k) for k in range(1, 11)])
    assert motion_iou(boxes)[12, 0] == pytest.approx(expected)  # lags 1..10 on both sides, never 11


def test_absent_frames_are_skipped_and_isolated_boxes_are_nan():
    box = [0.0, 0.0, 10.0, 10.0]
    shifted = [5.0, 0.0, 15.0, 10.0]  # IoU 50 / 150 with box
    boxes = np.array([[box, box], [NAN, NAN], [shifted, NAN]])  # object 1 is present once
    miou = motion_iou(boxes)
    np.testing.assert_allclose(miou[:, 0], [1 / 3, np.nan, 1 / 3])
    assert np.isnan(miou[:, 1]).all()


def test_speed_categories_follow_fgfa_thresholds():
    got = speed_category(np.array([0.95, 0.9, 0.8, 0.7, 0.69, np.nan]))
    assert got.tolist() == ["slow", "medium", "medium", "medium", "fast", ""]


def test_boxes_by_track_aligns_instances():
    per_frame = [np.array([[0, 0, 1, 1], [2, 2, 3, 3]]), np.array([[4, 4, 5, 5]])]
    out = boxes_by_track(per_frame, [np.array([7, 3]), np.array([7])])
    assert out.shape == (2, 2, 4)
    np.testing.assert_array_equal(out[0], [[2, 2, 3, 3], [0, 0, 1, 1]])
    assert np.isnan(out[1, 0]).all() and (out[1, 1] == [4, 4, 5, 5]).all()


def test_box_stats_known_answer():
    # Frame area 100. A static 5 x 5 box (slow, area 0.25) in frames 0-1 and a fast 1 x 1 box (area 0.01) that
    # jumps away in frame 1; frame 2 is empty.
    still, small = [0.0, 0.0, 5.0, 5.0], [0.0, 0.0, 1.0, 1.0]
    boxes = np.array([[still, small], [still, [5.0, 5.0, 6.0, 6.0]], [NAN, NAN]])
    stats = box_stats([boxes], frame_area=100.0)
    assert stats["num_boxes"] == 4 and stats["num_frames"] == 3
    assert (stats["slow_pct"], stats["medium_pct"], stats["fast_pct"]) == (50.0, 0.0, 50.0)
    assert stats["box_area_frac_mean"] == pytest.approx(0.13)
    assert stats["box_area_frac_median"] == pytest.approx(0.13)
    assert stats["box_area_frac_median_slow"] == pytest.approx(0.25)
    assert stats["box_area_frac_median_fast"] == pytest.approx(0.01)
    assert np.isnan(stats["box_area_frac_median_medium"])
    assert stats["objects_per_frame"] == pytest.approx(4 / 3)
    assert stats["empty_frame_pct"] == pytest.approx(100 / 3) and stats["one_object_frame_pct"] == 0.0


def test_check_calibration_applies_absolute_and_relative_tolerances():
    stats = dict(VID_VAL_REFERENCE)
    stats["slow_pct"] += 2.9
    stats["box_area_frac_median"] *= 1.25
    result = check_calibration(stats)
    assert result["slow_pct"]["ok"] and not result["box_area_frac_median"]["ok"]
    assert result["box_area_frac_median"]["tolerance"] == pytest.approx(0.2 * 0.078)


# --- mAP50 by motion speed ----------------------------------------------------------------------------------------


def _target(boxes, labels, miou):
    return {"boxes": torch.tensor(boxes, dtype=torch.float32).reshape(-1, 4), "labels": torch.tensor(labels),
            "motion_iou": torch.tensor(miou, dtype=torch.float32)}


def _pred(boxes, scores, labels):
    return {"boxes": torch.tensor(boxes, dtype=torch.float32).reshape(-1, 4),
            "scores": torch.tensor(scores, dtype=torch.float32), "labels": torch.tensor(labels)}


SLOW_BOX, FAST_BOX = [0.0, 0.0, 20.0, 20.0], [50.0, 50.0, 60.0, 60.0]


def test_detection_of_a_slow_box_is_not_a_false_positive_for_fast():
    target = _target([SLOW_BOX, FAST_BOX], [0, 0], [0.95, 0.5])
    # The slow box's detection scores highest: were it a false positive, fast AP would drop below 100.
    pred = _pred([SLOW_BOX, FAST_BOX], [0.9, 0.8], [0, 0])
    assert map50_by_motion([pred], [target]) == {"slow": 100.0, "medium": pytest.approx(np.nan, nan_ok=True),
                                                  "fast": 100.0}
    stray = _pred([SLOW_BOX, [200.0, 200.0, 210.0, 210.0], FAST_BOX], [0.9, 0.85, 0.8], [0, 0, 0])
    got = map50_by_motion([stray], [target])  # a detection on nothing is a false positive in every category
    assert got["fast"] == pytest.approx(50.0)  # ignored, FP, TP: precision 1/2 at every recall
    assert got["slow"] == 100.0  # TP, FP, ignored


def test_category_without_ground_truth_is_nan():
    target = _target([SLOW_BOX], [1], [0.99])
    got = map50_by_motion([_pred([SLOW_BOX], [0.5], [1])], [target])
    assert got["slow"] == 100.0 and np.isnan(got["medium"]) and np.isnan(got["fast"])


def test_boxes_without_motion_iou_are_ignored_everywhere():
    target = _target([SLOW_BOX, FAST_BOX], [0, 0], [0.95, float("nan")])
    got = map50_by_motion([_pred([FAST_BOX, SLOW_BOX], [0.9, 0.8], [0, 0])], [target])
    assert got["slow"] == 100.0 and np.isnan(got["fast"])


def test_single_category_equals_torchmetrics_map50():
    gen = torch.Generator().manual_seed(0)
    preds, targets = [], []
    for _ in range(6):
        G = int(torch.randint(1, 4, (1,), generator=gen))
        xy = torch.rand(G, 2, generator=gen) * 80
        gt = torch.cat([xy, xy + 10 + torch.rand(G, 2, generator=gen) * 20], dim=1)
        labels = torch.randint(0, 3, (G,), generator=gen)
        targets.append({"boxes": gt, "labels": labels, "motion_iou": torch.full((G,), 0.5)})
        noisy = gt + torch.randn(G, 4, generator=gen) * 3
        extra = torch.rand(2, 4, generator=gen).sort(dim=1).values * 100
        boxes = torch.cat([noisy, extra[:, [0, 1, 2, 3]]])
        preds.append({"boxes": boxes, "scores": torch.rand(G + 2, generator=gen),
                      "labels": torch.cat([labels, torch.randint(0, 3, (2,), generator=gen)])})
    plain = map50(preds, [{k: t[k] for k in ("boxes", "labels")} for t in targets])
    assert 0 < plain < 100
    assert map50_by_motion(preds, targets)["fast"] == pytest.approx(plain, abs=1e-4)


def test_all_correct_detections_score_100_in_every_category():
    target = _target([SLOW_BOX, FAST_BOX, [100.0, 0.0, 140.0, 40.0]], [0, 1, 2], [0.95, 0.5, 0.8])
    pred = _pred([SLOW_BOX, FAST_BOX, [100.0, 0.0, 140.0, 40.0]], [0.9, 0.8, 0.7], [0, 1, 2])
    assert map50_by_motion([pred], [target]) == {"slow": 100.0, "medium": 100.0, "fast": 100.0}


def test_a_class_with_boxes_and_no_detection_scores_zero_not_a_crash():
    import torch

    from tokbench.metrics import map50, map50_by_motion

    targets = [{"boxes": torch.tensor([[0.0, 0, 10, 10], [20.0, 20, 30, 30]]), "labels": torch.tensor([0, 1]),
                "motion_iou": torch.tensor([0.95, 0.95])}]
    preds = [{"boxes": torch.tensor([[0.0, 0, 10, 10]]), "scores": torch.tensor([0.9]), "labels": torch.tensor([0])}]
    # class 0 found (AP 100), class 1 missed (AP 0): 50 in the slow category, as torchmetrics' map_50 over all boxes
    assert map50_by_motion(preds, targets)["slow"] == 50.0 == map50(preds, targets)
