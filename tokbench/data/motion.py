"""Motion IoU (FGFA, ICCV 2017), its slow / medium / fast categories, and box statistics of a detection split.

The motion IoU of a box at frame t is the mean IoU of that object's box at t with its boxes at every other frame
``k`` in ``t - 10 .. t + 10`` where the object is present. FGFA groups ground truth by it: slow (> 0.9), medium
(0.7 - 0.9, both ends included) and fast (< 0.7). A box whose object is present in no other frame of its window has
no motion IoU (NaN) and belongs to no category.

Everything here is pure numpy on per-clip box arrays ``[T, M, 4]`` (xyxy px, one row per object instance, NaN rows
where the object is absent), so it serves the synthetic benchmark and real video (``boxes_by_track``) alike.
``VID_VAL_REFERENCE`` holds the statistics of ImageNet VID val that ``check_calibration`` compares against.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from enum import StrEnum

import numpy as np

MOTION_WINDOW = 10  # frames on each side of t
SLOW_ABOVE, FAST_BELOW = 0.9, 0.7  # FGFA thresholds on motion IoU


class Speed(StrEnum):
    """FGFA's motion categories of a ground-truth box."""

    SLOW = "slow"
    MEDIUM = "medium"
    FAST = "fast"


SPEEDS = tuple(Speed)

# ImageNet VID val, as measured for the calibration of synthvid v2 (relative area = box area / frame area).
VID_VAL_REFERENCE = {
    "slow_pct": 37.9,
    "medium_pct": 35.9,
    "fast_pct": 26.2,
    "box_area_frac_mean": 0.152,
    "box_area_frac_median": 0.078,
    "box_area_frac_p10": 0.0067,
    "box_area_frac_p90": 0.415,
    "box_area_frac_median_slow": 0.269,
    "box_area_frac_median_medium": 0.143,
    "box_area_frac_median_fast": 0.045,
    "objects_per_frame": 1.55,
    "empty_frame_pct": 2.3,
    "one_object_frame_pct": 67.5,
}
# (statistic, tolerance, "abs" in the statistic's own unit or "rel" as a fraction of the reference)
CALIBRATION_TOLERANCES = (
    ("slow_pct", 3.0, "abs"),
    ("medium_pct", 3.0, "abs"),
    ("fast_pct", 3.0, "abs"),
    ("box_area_frac_mean", 0.2, "rel"),
    ("box_area_frac_median", 0.2, "rel"),
    ("objects_per_frame", 0.15, "abs"),
)


def box_iou_pairwise(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """IoU of corresponding boxes: ``a``, ``b`` ``[..., 4]`` xyxy -> ``[...]`` (NaN where either is NaN)."""
    w = np.minimum(a[..., 2], b[..., 2]) - np.maximum(a[..., 0], b[..., 0])
    h = np.minimum(a[..., 3], b[..., 3]) - np.maximum(a[..., 1], b[..., 1])
    inter = np.clip(w, 0, None) * np.clip(h, 0, None)
    area_a = (a[..., 2] - a[..., 0]) * (a[..., 3] - a[..., 1])
    area_b = (b[..., 2] - b[..., 0]) * (b[..., 3] - b[..., 1])
    with np.errstate(invalid="ignore", divide="ignore"):
        return inter / (area_a + area_b - inter)


def motion_iou(boxes: np.ndarray, window: int = MOTION_WINDOW) -> np.ndarray:
    """Motion IoU of every box of one clip: ``boxes`` ``[T, M, 4]`` (NaN rows = absent) -> ``[T, M]``.

    Entry ``[t, m]`` is the mean IoU of box ``[t, m]`` with the boxes ``[k, m]``, ``0 < |k - t| <= window``, where
    object ``m`` is present; NaN where it is absent at ``t`` or present at no such ``k``.
    """
    boxes = np.asarray(boxes, dtype=np.float64)
    T, M = boxes.shape[:2]
    total, count = np.zeros((T, M)), np.zeros((T, M))
    for lag in range(1, min(window, T - 1) + 1):
        iou = box_iou_pairwise(boxes[:-lag], boxes[lag:])  # [T - lag, M]: frame t with frame t + lag
        valid = ~np.isnan(iou)
        iou = np.where(valid, iou, 0.0)
        total[:-lag] += iou
        total[lag:] += iou
        count[:-lag] += valid
        count[lag:] += valid
    with np.errstate(invalid="ignore"):
        return np.where(count > 0, total / np.maximum(count, 1), np.nan)


def speed_category(miou: np.ndarray | float) -> np.ndarray:
    """FGFA category of each motion IoU: array of ``"slow"`` (> 0.9), ``"medium"`` ([0.7, 0.9]), ``"fast"``
    (< 0.7) or ``""`` (NaN: no category), same shape as ``miou``."""
    miou = np.asarray(miou, dtype=np.float64)
    out = np.full(miou.shape, "", dtype="<U6")
    out[miou > SLOW_ABOVE] = Speed.SLOW
    out[(miou >= FAST_BELOW) & (miou <= SLOW_ABOVE)] = Speed.MEDIUM
    out[miou < FAST_BELOW] = Speed.FAST
    return out


def boxes_by_track(per_frame_boxes: Sequence[np.ndarray], per_frame_ids: Sequence[np.ndarray]) -> np.ndarray:
    """Per-frame boxes ``[M_t, 4]`` with instance ids ``[M_t]`` -> ``[T, M, 4]``, one row per distinct id (sorted),
    NaN where that instance has no box."""
    ids = np.unique(np.concatenate([np.asarray(i, dtype=np.int64) for i in per_frame_ids] or [np.zeros(0, int)]))
    out = np.full((len(per_frame_boxes), len(ids), 4), np.nan)
    for t, (b, i) in enumerate(zip(per_frame_boxes, per_frame_ids, strict=True)):
        out[t, np.searchsorted(ids, np.asarray(i, dtype=np.int64))] = np.asarray(b, dtype=np.float64).reshape(-1, 4)
    return out


def box_stats(clips: Iterable[np.ndarray], frame_area: float) -> dict:
    """Size, speed and count statistics of a split, from per-clip boxes ``[T, M, 4]`` (NaN rows = absent).

    Shares are percentages of boxes (``slow_pct`` ...; boxes without a motion IoU are left out of them) or of
    frames (``empty_frame_pct``, ``one_object_frame_pct``). Areas are box area / ``frame_area``: mean, median,
    10th / 90th percentile and the median per speed category (NaN when the category is empty).
    """
    areas, mious, counts = [], [], []
    for boxes in clips:
        present = ~np.isnan(boxes[..., 0])  # [T, M]
        counts.append(present.sum(axis=1))
        areas.append(((boxes[..., 2] - boxes[..., 0]) * (boxes[..., 3] - boxes[..., 1]))[present] / frame_area)
        mious.append(motion_iou(boxes)[present])
    area, miou, count = np.concatenate(areas), np.concatenate(mious), np.concatenate(counts)
    category = speed_category(miou)
    rated = category != ""
    stats = {"num_boxes": int(len(area)), "num_frames": int(len(count))}
    for speed in SPEEDS:
        stats[f"{speed}_pct"] = 100.0 * float(np.mean(category[rated] == speed)) if rated.any() else float("nan")
    stats |= {
        "box_area_frac_mean": _stat(np.mean, area),
        "box_area_frac_median": _stat(np.median, area),
        "box_area_frac_p10": _stat(lambda a: np.percentile(a, 10), area),
        "box_area_frac_p90": _stat(lambda a: np.percentile(a, 90), area),
    }
    for speed in SPEEDS:
        stats[f"box_area_frac_median_{speed}"] = _stat(np.median, area[category == speed])
    stats |= {
        "objects_per_frame": _stat(np.mean, count),
        "empty_frame_pct": 100.0 * _stat(np.mean, count == 0),
        "one_object_frame_pct": 100.0 * _stat(np.mean, count == 1),
    }
    return stats


def _stat(fn, values: np.ndarray) -> float:
    return float(fn(values)) if len(values) else float("nan")


def check_calibration(stats: dict, reference: dict | None = None) -> dict[str, dict]:
    """Compare ``box_stats`` output with ``reference`` (default ``VID_VAL_REFERENCE``) under
    ``CALIBRATION_TOLERANCES``: per statistic ``{"measured", "reference", "tolerance", "ok"}``, where the tolerance
    is in the statistic's unit (relative ones are converted)."""
    reference = VID_VAL_REFERENCE if reference is None else reference
    out = {}
    for name, tol, kind in CALIBRATION_TOLERANCES:
        ref = reference[name]
        bound = tol * ref if kind == "rel" else tol
        out[name] = {"measured": stats[name], "reference": ref, "tolerance": bound,
                     "ok": bool(abs(stats[name] - ref) <= bound)}
    return out
