"""Seeded bootstrap confidence intervals over clips, and paired differences between two rows.

A bootstrap resample draws C clips with replacement from the C clips of a row; it is held as multinomial counts
``weights [R, C]`` (each row sums to C), so every metric of every row is recomputed on the SAME resamples and the
difference of two rows is paired. A metric that decomposes per clip (a mean, a ratio of sums, top-1) is one
matrix product with ``weights``. mAP50 does not decompose, so ``DetectionTable`` matches detections once (COCO at
IoU 0.5, as ``tokbench.metrics``) and then computes AP for all R resamples at once: a clip counted w times weighs
its detections and positives by w, which equals duplicating the clip (up to the order of exactly tied scores in
different clips). Everything is numpy; torch tensors are accepted as input.
"""

from __future__ import annotations

import functools
import time
import warnings
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

ALL_BOXES = "all"  # the category in which every ground-truth box is positive (``tokbench.metrics.map50``)
# Resamples go through mAP in blocks of about this many [rows, points] float64 elements (256 KB): temporaries that
# stay in cache and in malloc's free lists ran 1.5-2x faster than [1000, points] ones on freshly mapped pages.
_BLOCK_ELEMENTS = 1 << 15


def resample_weights(num_clips: int, resamples: int = 1000, seed: int = 0) -> np.ndarray:
    """Bootstrap resamples of ``num_clips`` clips as counts ``[R, C]`` (int64, each row sums to C); the same
    ``seed`` gives the same resamples."""
    rng = np.random.default_rng(seed)
    return rng.multinomial(num_clips, np.full(num_clips, 1.0 / num_clips), size=resamples)


def interval(samples: np.ndarray, level: float = 0.95) -> tuple[float, float]:
    """Percentile interval ``(low, high)`` of bootstrap ``samples [R]``, NaN samples left out; ``(nan, nan)``
    when every sample is NaN."""
    samples = np.asarray(samples, dtype=np.float64)
    if np.isnan(samples).all():
        return float("nan"), float("nan")
    tail = 50.0 * (1.0 - level)
    low, high = np.nanpercentile(samples, [tail, 100.0 - tail])
    return float(low), float(high)


def paired(a_samples: np.ndarray, b_samples: np.ndarray, level: float = 0.95) -> tuple[float, float]:
    """Interval of the difference ``a - b`` of a metric of two rows, both ``[R]`` computed on the same resample
    weights; resamples where either is NaN are left out."""
    return interval(np.asarray(a_samples, dtype=np.float64) - np.asarray(b_samples, dtype=np.float64), level)


def excludes_zero(bounds: tuple[float, float]) -> bool:
    """Whether an interval ``(low, high)`` lies entirely on one side of zero (False when NaN)."""
    low, high = bounds
    return bool(low > 0 or high < 0)


# --- metrics that decompose per clip ------------------------------------------------------------------------------


def mean_interval(per_clip_values: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """Bootstrap samples ``[R]`` of the mean over clips of ``per_clip_values [C]`` (e.g. a per-clip sum or
    score), for resample ``weights [R, C]``."""
    weights = np.asarray(weights, dtype=np.float64)
    return weights @ np.asarray(per_clip_values, dtype=np.float64) / weights.sum(axis=1)


def ratio(numerators: np.ndarray, denominators: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """Bootstrap samples ``[R]`` of a ratio of sums over clips, ``sum_c w_c n_c / sum_c w_c d_c``, from
    ``numerators [C]`` and ``denominators [C]`` (e.g. pruned frames and frames per clip); NaN where the resampled
    denominator is 0."""
    weights = np.asarray(weights, dtype=np.float64)
    num = weights @ np.asarray(numerators, dtype=np.float64)
    den = weights @ np.asarray(denominators, dtype=np.float64)
    return np.divide(num, den, out=np.full_like(num, np.nan), where=den != 0)


def top1(correct: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """Bootstrap samples ``[R]`` of top-1 accuracy in percent from per-video ``correct [V]`` flags; ``weights
    [R, V]`` resample videos (for multi-view clips resample videos, not views)."""
    return 100.0 * mean_interval(np.asarray(correct, dtype=np.float64), weights)


# --- mAP50 -----------------------------------------------------------------------------------------------------


@functools.cache
def recall_thresholds() -> np.ndarray:
    """The 101 recall thresholds of torchmetrics' ``map_50`` ``[101]``: ``torch.linspace(0, 1, 101)`` in float32,
    so e.g. 0.8 is 0.800000011920929 and a recall of exactly 4/5 does not reach it (pycocotools' own float64
    ``np.linspace``, used by ``tokbench.metrics._coco_ap``, differs there)."""
    import torch

    thresholds = np.array(torch.linspace(0.0, 1.0, 101).tolist())
    thresholds.setflags(write=False)
    return thresholds


@dataclass(frozen=True)
class ClassCurve:
    """Matched detections of one class in one category, over the clips of a row.

    ``scores [D]``, ``outcome [D]`` (1 TP, 0 FP, -1 matched an ignored box) and ``clip [D]`` (clip index) are in
    descending score order (mergesort over the detections in clip, frame order, as COCO); ``positives [C]`` counts
    the positive boxes per clip. ``tp_counts [C, T]`` and ``fp_counts [C, T]`` count, per clip, the TPs and FPs
    ranked at or before the last TP of each of the T runs of consecutive TPs (no FP between them; ignored
    detections count as neither): the only precision/recall points that can set AP.
    """

    scores: np.ndarray
    outcome: np.ndarray
    clip: np.ndarray
    positives: np.ndarray
    tp_counts: np.ndarray
    fp_counts: np.ndarray

    @classmethod
    def from_detections(cls, scores: np.ndarray, outcome: np.ndarray, clip: np.ndarray,
                        positives: np.ndarray) -> ClassCurve:
        """Sort detections ``[D]`` by descending score (mergesort) and count the TPs/FPs per clip at the end of
        every run of TPs."""
        order = np.argsort(-scores, kind="mergesort")
        scores, outcome, clip = scores[order], outcome[order], clip[order]
        counted = outcome >= 0
        hit, owner = outcome[counted], clip[counted]
        onehot = np.zeros((len(positives), len(hit)))  # [C, D'] the clip of each counted detection
        onehot[owner, np.arange(len(hit))] = 1.0
        # Within a run of TPs precision rises, so the run's last TP sets the interpolated precision of every
        # recall threshold the run reaches: only run ends are kept.
        run_end = np.flatnonzero((hit == 1) & (np.append(hit[1:], 0) != 1))
        tp_counts = np.cumsum(onehot * (hit == 1), axis=1)[:, run_end]
        fp_counts = np.cumsum(onehot * (hit == 0), axis=1)[:, run_end]
        return cls(scores, outcome, clip, positives, tp_counts, fp_counts)


def average_precision(curves: Sequence[ClassCurve], weights: np.ndarray) -> np.ndarray:
    """101-point interpolated AP (fraction) of each of K classes for every resample: ``curves`` of one category,
    ``weights [R, C]`` integer counts -> ``[R, K]``, NaN where a resample has no positive of that class.

    The classes' points lie side by side (S = the sum of their T), so each step is one operation on ``[R, S]``.
    Counts are integer-valued floats: the weighted sums are exact and recall is COCO's float ``tp / positives``.
    """
    weights = np.asarray(weights, dtype=np.float64)
    sizes = np.array([curve.tp_counts.shape[1] for curve in curves])
    rows = max(1, _BLOCK_ELEMENTS // max(1, sizes.sum()))
    if len(weights) > rows:
        return np.concatenate([average_precision(curves, weights[i : i + rows])
                               for i in range(0, len(weights), rows)])
    positives = weights @ np.stack([curve.positives for curve in curves], axis=1)  # [R, K]
    ap = np.zeros(positives.shape)
    scored = np.flatnonzero(sizes)  # classes with a true positive; the others have AP 0
    if len(scored):
        starts = np.concatenate([[0], np.cumsum(sizes[scored])[:-1]])
        tp = weights @ np.concatenate([curves[k].tp_counts for k in scored], axis=1)  # [R, S]
        precision = weights @ np.concatenate([curves[k].fp_counts for k in scored], axis=1)
        precision += tp
        np.divide(tp, precision, out=precision, where=precision > 0)  # 0 where nothing counts yet
        for start, size in zip(starts, sizes[scored], strict=True):  # interpolated: the max over later points
            block = precision[:, start : start + size][:, ::-1]
            np.maximum.accumulate(block, axis=1, out=block)
        # COCO reads each recall threshold at the first point whose recall reaches it (precision 0 past the
        # last point): point j serves the thresholds in (recall[j - 1], recall[j]].
        reached = _thresholds_reached_by_count(tp, positives[:, scored], np.repeat(np.arange(len(scored)),
                                                                                   sizes[scored]))
        served = np.diff(reached, axis=1, prepend=0)
        served[:, starts] = reached[:, starts]
        precision *= served
        ap[:, scored] = np.add.reduceat(precision, starts, axis=1) / len(recall_thresholds())
    ap[positives == 0] = np.nan
    return ap


def _thresholds_reached_by_count(tp: np.ndarray, positives: np.ndarray, column_class: np.ndarray) -> np.ndarray:
    """``_thresholds_reached(tp / positives)`` for integer-valued ``tp [R, S]`` and ``positives [R, K]`` (the
    class of column s is ``column_class[s]``), looked up in a table over the distinct positive counts (a set of
    resamples has few) rather than computed per element: int64 ``[R, S]``."""
    values, inverse = np.unique(positives, return_inverse=True)  # [U]
    K = int(values.max()) + 1  # tp <= positives
    table = _thresholds_reached(np.arange(K) / np.maximum(values, 1.0)[:, None])  # [U, K]
    index = tp.astype(np.int64)
    index += inverse.reshape(positives.shape)[:, column_class] * K
    return table.ravel()[index]


def _thresholds_reached(recall: np.ndarray) -> np.ndarray:
    """How many of ``recall_thresholds()`` are ``<= recall`` (float comparison, as ``np.searchsorted``), for
    ``recall >= 0`` of any shape; int64 of the same shape."""
    thresholds = recall_thresholds()
    steps = len(thresholds) - 1
    padded = np.append(thresholds, np.inf)
    count = np.clip(np.floor(recall * steps).astype(np.int64) + 1, 1, steps + 1)  # off by at most one
    count += padded[count] <= recall
    count -= padded[count - 1] > recall
    return count


@dataclass(frozen=True)
class DetectionTable:
    """Detections of a row matched once, for mAP50 on any clip resample.

    ``curves[category]`` holds one ``ClassCurve`` per class with positives in that category: ``"all"`` (every box
    positive, ``tokbench.metrics.map50``) and, when every target carries ``"motion_iou"``, the FGFA speeds
    ``"slow"``, ``"medium"``, ``"fast"`` with the ignore rules of ``tokbench.metrics.map50_by_motion``.
    """

    num_clips: int
    curves: dict[str, tuple[ClassCurve, ...]]

    @classmethod
    def from_clips(cls, predictions: Sequence[Sequence[dict]], targets: Sequence[Sequence[dict]],
                   max_detections: int = 100) -> DetectionTable:
        """Match per-clip lists of per-frame ``predictions`` ``{"boxes" [M, 4] xyxy, "scores" [M], "labels"
        [M]}`` to ``targets`` ``{"boxes" [G, 4], "labels" [G], optional "motion_iou" [G]}``: per frame and class
        the top ``max_detections`` detections, COCO matching at IoU 0.5 (``tokbench.metrics._match``).

        Every (frame, class) group is matched at once: the N detections and G boxes of all frames are flattened,
        IoU is computed for the P (detection, box) pairs of a group, and the greedy matching runs once per
        detection rank over the groups and categories together. The result equals ``_from_clips_loop`` (the
        per-frame, per-class loop) exactly, which it falls back to when the frames' dtypes differ or a label is
        not an integer."""
        from tokbench.data.motion import SPEEDS, box_iou_pairwise, speed_category

        C = len(predictions)
        preds, gts, frame_clip = [], [], []  # per frame, over all clips
        for c, (clip_preds, clip_targets) in enumerate(zip(predictions, targets, strict=True)):
            for pred, gt in zip(clip_preds, clip_targets, strict=True):
                preds.append(_numpy(pred))
                gts.append(_numpy(gt))
                frame_clip.append(c)
        with_motion = all("motion_iou" in t for t in gts)
        categories = [ALL_BOXES, *(str(s) for s in SPEEDS)] if with_motion else [ALL_BOXES]
        if not preds:
            return cls(C, {cat: () for cat in categories})
        labels = [np.concatenate([f["labels"].ravel() for f in frames]) for frames in (preds, gts)]
        if (len({p["scores"].dtype for p in preds}) > 1  # the dtypes the loop would compute or concatenate in
                or any(len({f["boxes"].dtype for f in frames if f["boxes"].size}) > 1 for frames in (preds, gts))
                or any(lab.dtype.kind not in "biu" and not np.array_equal(lab, lab.astype(np.int64))
                       for lab in labels)):
            return _from_clips_loop(predictions, targets, max_detections)
        det_label, gt_label = (lab.astype(np.int64) for lab in labels)
        values, label_index = np.unique(np.concatenate([det_label, gt_label]), return_inverse=True)  # [L]
        F, N = len(preds), len(det_label)
        frame_clip = np.array(frame_clip, dtype=np.int64)  # [F]
        # group (class, frame) = class * F + frame: sorting by group puts each class's detections in clip, frame
        # order, as the loop concatenates them
        det_group = label_index[:N] * F + np.repeat(np.arange(F), [len(p["labels"]) for p in preds])  # [N]
        gt_group = label_index[N:] * F + np.repeat(np.arange(F), [len(g["labels"]) for g in gts])  # [G]
        det_scores = np.concatenate([p["scores"].ravel() for p in preds])
        det_boxes = _concat_boxes([p["boxes"] for p in preds])  # [N, 4]
        gt_boxes = _concat_boxes([g["boxes"] for g in gts])  # [G, 4]
        is_pos = np.ones((len(categories), len(gt_group)), dtype=bool)  # [K, G]
        if with_motion:
            speed = speed_category(np.concatenate([np.asarray(g["motion_iou"], np.float64).ravel() for g in gts]))
            is_pos[1:] = speed[None, :] == np.array(categories[1:])[:, None]
        # per group in descending score (stable: ties keep their order in the frame), the top max_detections
        order = np.argsort(-det_scores, kind="stable")
        order = order[np.argsort(det_group[order], kind="stable")]
        group_start = np.flatnonzero(np.diff(det_group[order], prepend=-1))
        group_size = np.diff(group_start, append=N)
        rank = np.arange(N) - np.repeat(group_start, group_size)  # [N] within the group
        limit = max_detections if max_detections >= 0 else np.repeat(group_size, group_size) + max_detections
        kept = rank < limit  # as [:max_detections]
        order, rank = order[kept], rank[kept]
        det_group, det_scores, det_boxes = det_group[order], det_scores[order], det_boxes[order]
        gt_order = np.argsort(gt_group, kind="stable")
        gt_group, gt_boxes, is_pos = gt_group[gt_order], gt_boxes[gt_order], is_pos[:, gt_order]
        # the P (detection, box) pairs of each group, in detection then box order; only those at IoU >= 0.5 count
        low = np.searchsorted(gt_group, det_group, side="left")
        reps = np.searchsorted(gt_group, det_group, side="right") - low  # [N'] boxes in the detection's group
        pair_det = np.repeat(np.arange(len(det_group)), reps)  # [P]
        pair_gt = np.repeat(low - np.cumsum(reps) + reps, reps) + np.arange(len(pair_det))
        iou = box_iou_pairwise(det_boxes[pair_det], gt_boxes[pair_gt]) if len(pair_det) else np.zeros(0)
        near = np.flatnonzero(iou >= 0.5)
        near = near[np.argsort(rank[pair_det[near]], kind="stable")]  # by rank, then detection, then box
        pair_det, pair_gt, iou = pair_det[near], pair_gt[near], iou[near]
        outcome = _greedy_match(rank[pair_det], pair_det, pair_gt, iou, is_pos, len(det_group))  # [K, N']
        # per class and category: scores, outcomes and clips in clip, frame, rank order; positives per clip
        det_label, det_clip = det_group // F, frame_clip[det_group % F]
        bounds = np.searchsorted(det_label, np.arange(len(values) + 1))
        positives = np.stack([np.bincount((gt_group // F) * C + frame_clip[gt_group % F], weights=pos,
                                          minlength=len(values) * C) for pos in is_pos.astype(np.float64)])
        positives = positives.reshape(len(categories), len(values), C)  # [K, L, C]
        curves = {
            cat: tuple(
                ClassCurve.from_detections(det_scores[bounds[lab] : bounds[lab + 1]],
                                           outcome[k, bounds[lab] : bounds[lab + 1]],
                                           det_clip[bounds[lab] : bounds[lab + 1]], positives[k, lab].copy())
                for lab in range(len(values)) if positives[k, lab].any())
            for k, cat in enumerate(categories)
        }
        return cls(C, curves)

    def map50(self, weights: np.ndarray, category: str = ALL_BOXES) -> np.ndarray:
        """mAP50 in percent of every resample, ``weights [R, C]`` (integer counts) -> ``[R]``: the mean AP over
        the classes with a positive in that resample; NaN where the resample has none (or the category is not in
        the table)."""
        weights = np.asarray(weights)
        if weights.shape[1] != self.num_clips:
            raise ValueError(f"weights are over {weights.shape[1]} clips, the table has {self.num_clips}")
        if (weights < 0).any() or not np.array_equal(weights, np.round(weights)):
            raise ValueError("weights must be non-negative integer counts (times each clip is drawn)")
        curves = self.curves.get(category, ())
        if not curves:
            return np.full(len(weights), np.nan)
        ap = average_precision(curves, weights)  # [R, K]
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)  # all-NaN row: no positive at all
            return 100.0 * np.nanmean(ap, axis=1)

    def map50_by_motion(self, weights: np.ndarray) -> dict[str, np.ndarray]:
        """``{"slow": [R], "medium": [R], "fast": [R]}``: mAP50 in percent of each FGFA speed per resample."""
        return {cat: self.map50(weights, cat) for cat in self.curves if cat != ALL_BOXES}


def _from_clips_loop(predictions: Sequence[Sequence[dict]], targets: Sequence[Sequence[dict]],
                     max_detections: int = 100) -> DetectionTable:
    """``DetectionTable.from_clips`` one frame and class at a time (``tokbench.metrics._match`` per group): the
    reference the vectorised matching equals, and its fallback for frames of different dtypes."""
    from tokbench.data.motion import SPEEDS, speed_category

    C = len(predictions)
    targets = [[_numpy(t) for t in clip] for clip in targets]
    with_motion = all("motion_iou" in t for clip in targets for t in clip)
    categories = [ALL_BOXES, *(str(s) for s in SPEEDS)] if with_motion else [ALL_BOXES]
    found: dict[tuple[str, int], dict[str, list]] = {}
    positives: dict[tuple[str, int], np.ndarray] = {}
    for c, (clip_preds, clip_targets) in enumerate(zip(predictions, targets, strict=True)):
        for pred, gt in zip(clip_preds, clip_targets, strict=True):
            pred = _numpy(pred)
            speed = speed_category(gt["motion_iou"]) if with_motion else None
            is_positive = {cat: np.ones(len(gt["labels"]), bool) if cat == ALL_BOXES else speed == cat
                           for cat in categories}
            for label in np.union1d(gt["labels"], pred["labels"]).astype(np.int64):
                det = np.flatnonzero(pred["labels"] == label)
                det = det[np.argsort(-pred["scores"][det], kind="stable")][:max_detections]
                det_boxes, det_scores = pred["boxes"][det].reshape(-1, 4), pred["scores"][det]
                of_label = gt["labels"] == label
                gt_boxes = gt["boxes"][of_label].reshape(-1, 4)
                near = _near(det_boxes, gt_boxes)
                for cat in categories:
                    key, is_pos = (cat, int(label)), is_positive[cat][of_label]
                    bucket = found.setdefault(key, {"scores": [], "outcome": [], "clip": []})
                    bucket["scores"].append(det_scores)
                    bucket["outcome"].append(_match_near(det_boxes, gt_boxes, is_pos, near))
                    bucket["clip"].append(np.full(len(det), c))
                    positives.setdefault(key, np.zeros(C))[c] += is_pos.sum()
    curves = {
        cat: tuple(
            ClassCurve.from_detections(*(np.concatenate(found[key][f]) for f in ("scores", "outcome", "clip")),
                                       positives[key])
            for key in sorted(k for k in found if k[0] == cat) if positives[key].any())
        for cat in categories
    }
    return DetectionTable(C, curves)


def _concat_boxes(boxes: Sequence[np.ndarray]) -> np.ndarray:
    """Per-frame boxes ``[M_t, 4]`` -> ``[sum M_t, 4]``, in the dtype of the non-empty ones."""
    boxes = [b.reshape(-1, 4) for b in boxes if b.size]
    return np.concatenate(boxes) if boxes else np.zeros((0, 4))


def _greedy_match(pair_rank: np.ndarray, pair_det: np.ndarray, pair_gt: np.ndarray, iou: np.ndarray,
                  is_pos: np.ndarray, num_detections: int) -> np.ndarray:
    """``tokbench.metrics._match`` of every (frame, class) group at once, in each of K categories: the P
    (detection, box) pairs of a group at IoU >= 0.5, ``pair_det [P]``, ``pair_gt [P]`` and ``iou [P]``, sorted by
    ``pair_rank [P]`` (the detection's rank by score in its group), then detection, then box; ``is_pos [K, G]``
    -> outcome ``[K, N]`` (1 TP, 0 FP, -1 matched an ignored box).

    Detections of one rank lie in different groups and never compete for a box, so one step per rank gives each
    of them, per category, the free positive box of highest IoU (the first on ties), else the free ignored one.
    """
    outcome = np.zeros((len(is_pos), num_detections), dtype=np.int64)
    taken = np.zeros(is_pos.shape, dtype=bool)  # [K, G]
    bounds = np.append(np.flatnonzero(np.diff(pair_rank, prepend=-1)), len(pair_rank))
    for low, high in zip(bounds[:-1], bounds[1:], strict=True):
        det, gt, value = pair_det[low:high], pair_gt[low:high], iou[low:high]  # [n]
        start = np.flatnonzero(np.diff(det, prepend=-1))  # [S] the first pair of each detection
        size = np.diff(start, append=len(det))
        tier = np.where(taken[:, gt], 0, np.where(is_pos[:, gt], 2, 1)).astype(np.int8)  # [K, n] 0 taken
        best = np.maximum.reduceat(tier, start, axis=1)  # [K, S]
        top = (tier == np.repeat(best, size, axis=1)) & (tier > 0)
        top_iou = np.maximum.reduceat(np.where(top, value, -np.inf), start, axis=1)
        top &= value == np.repeat(top_iou, size, axis=1)
        first = np.minimum.reduceat(np.where(top, np.arange(len(det)), len(det)), start, axis=1)  # [K, S]
        k, s = np.nonzero(best)
        taken[k, gt[first[k, s]]] = True
        outcome[k, det[start[s]]] = np.where(best[k, s] == 2, 1, -1)
    return outcome


def _near(det_boxes: np.ndarray, gt_boxes: np.ndarray, iou_thr: float = 0.5) -> np.ndarray:
    """Whether each detection ``[D, 4]`` has IoU >= ``iou_thr`` with some ground-truth box ``[G, 4]``: ``[D]``."""
    from tokbench.data.motion import box_iou_pairwise

    if len(det_boxes) == 0 or len(gt_boxes) == 0:
        return np.zeros(len(det_boxes), dtype=bool)
    return (box_iou_pairwise(det_boxes[:, None, :], gt_boxes[None, :, :]) >= iou_thr).any(axis=1)


def _match_near(det_boxes: np.ndarray, gt_boxes: np.ndarray, is_pos: np.ndarray, near: np.ndarray) -> np.ndarray:
    """``tokbench.metrics._match`` (1 TP / 0 FP / -1 ignored per score-sorted detection ``[D, 4]``), run only on
    the ``near [D]`` detections: the others take no box, so leaving them out changes no outcome."""
    from tokbench.metrics import _match

    outcome = np.zeros(len(det_boxes), dtype=np.int64)
    if near.any():
        outcome[near] = _match(det_boxes[near], gt_boxes, is_pos)
    return outcome


def _numpy(frame: dict) -> dict[str, np.ndarray]:
    """A per-frame dict of tensors or arrays -> numpy arrays."""
    return {k: v.detach().cpu().numpy() if hasattr(v, "detach") else np.asarray(v) for k, v in frame.items()}


# --- cost ------------------------------------------------------------------------------------------------------


def synthetic_detections(num_clips: int = 24, frames: int = 32, detections_per_frame: float = 10.0,
                         gt_per_frame: float = 1.5, num_classes: int = 6, seed: int = 0,
                         size: float = 224.0) -> tuple[list[list[dict]], list[list[dict]]]:
    """Random per-clip lists of per-frame predictions and targets (numpy, xyxy px in ``size``): Poisson box counts
    (so some frames have no ground truth or no detection), ground truth that overlaps, noisy detections of most
    boxes (some twice, some with a wrong label), random false positives, motion IoUs in [0.5, 1] with some NaN."""
    rng = np.random.default_rng(seed)

    def boxes(n: int) -> np.ndarray:
        xy = rng.uniform(0, size * 0.8, (n, 2))
        return np.concatenate([xy, xy + rng.uniform(8, size * 0.4, (n, 2))], axis=1)

    def jitter(b: np.ndarray, px: float) -> np.ndarray:
        out = b + rng.normal(0, px, b.shape)
        out[:, 2:] = np.maximum(out[:, 2:], out[:, :2] + 2)
        return out

    predictions, targets = [], []
    for _ in range(num_clips):
        clip_preds, clip_targets = [], []
        for _ in range(frames):
            G = rng.poisson(gt_per_frame)
            gt, labels = boxes(G), rng.integers(0, num_classes, G)
            close = np.flatnonzero(rng.random(G) < 0.3)[1:]
            gt[close] = jitter(gt[close - 1], 4.0)  # overlapping ground truth
            miou = np.where(rng.random(G) < 0.1, np.nan, rng.uniform(0.5, 1.0, G))
            seen = np.flatnonzero(rng.random(G) < 0.8)
            seen = np.concatenate([seen, seen[rng.random(len(seen)) < 0.2]])  # some objects detected twice
            noisy = jitter(gt[seen], 6.0)
            noisy_labels = np.where(rng.random(len(seen)) < 0.1, rng.integers(0, num_classes, len(seen)),
                                    labels[seen])
            extra = rng.poisson(max(detections_per_frame - len(noisy), 0.0))
            det = np.concatenate([noisy, boxes(extra)])
            det_labels = np.concatenate([noisy_labels, rng.integers(0, num_classes, extra)])
            scores = np.concatenate([rng.uniform(0.3, 1.0, len(noisy)), rng.uniform(0.0, 0.8, extra)])
            clip_targets.append({"boxes": gt.astype(np.float32), "labels": labels, "motion_iou": miou})
            clip_preds.append({"boxes": det.astype(np.float32), "scores": scores.astype(np.float32),
                               "labels": det_labels})
        predictions.append(clip_preds)
        targets.append(clip_targets)
    return predictions, targets


def benchmark(num_clips: int = 24, frames: int = 32, detections_per_frame: float = 10.0, resamples: int = 1000,
              seed: int = 0, repeats: int = 3) -> dict[str, float]:
    """Cost of bootstrap mAP50 on a synthetic row against one torchmetrics ``map50`` call on the same frames:
    ``table_build_ms`` (matching, once per row), ``map50_ms`` / ``map50_<speed>_ms`` (all R resamples of one
    metric, median of ``repeats``), ``torchmetrics_map50_ms``, and ``map50`` (torchmetrics) beside
    ``map50_table`` (weights all ones)."""
    import torch

    from tokbench.metrics import map50

    predictions, targets = synthetic_detections(num_clips, frames, detections_per_frame, seed=seed)
    recall_thresholds()  # imports torch once, outside the timings
    out: dict[str, float] = {}
    start = time.perf_counter()
    table = DetectionTable.from_clips(predictions, targets)
    out["table_build_ms"] = 1e3 * (time.perf_counter() - start)
    weights = resample_weights(num_clips, resamples, seed)
    for cat in table.curves:
        times = []
        for _ in range(repeats):
            start = time.perf_counter()
            table.map50(weights, cat)
            times.append(1e3 * (time.perf_counter() - start))
        out["map50_ms" if cat == ALL_BOXES else f"map50_{cat}_ms"] = float(np.median(times))
    flat_preds = [{k: torch.from_numpy(v) for k, v in p.items()} for clip in predictions for p in clip]
    flat_targets = [{k: torch.from_numpy(t[k]) for k in ("boxes", "labels")} for clip in targets for t in clip]
    start = time.perf_counter()
    out["map50"] = map50(flat_preds, flat_targets)
    out["torchmetrics_map50_ms"] = 1e3 * (time.perf_counter() - start)
    out["map50_table"] = float(table.map50(np.ones((1, num_clips)))[0])
    return out
