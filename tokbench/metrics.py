"""Quality metrics: mAP50 as the paper reports it, mAP50 by motion speed (FGFA), top-1, and fidelity to the dense
model."""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F


def map50(predictions: list[dict[str, torch.Tensor]], targets: list[dict[str, torch.Tensor]]) -> float:
    """COCO-style ``map_50`` of torchmetrics' ``MeanAveragePrecision`` (the paper's mAP50), in percent.

    Args:
        predictions: per image ``{"boxes" [M, 4] xyxy, "scores" [M], "labels" [M]}``.
        targets: per image ``{"boxes" [G, 4] xyxy, "labels" [G]}``.
    """
    from torchmetrics.detection import MeanAveragePrecision

    # computed once over every frame by one process: never gathered across a torchrun process group
    metric = MeanAveragePrecision(iou_type="bbox", box_format="xyxy", sync_on_compute=False)
    metric.update([{k: v.detach().cpu() for k, v in p.items()} for p in predictions],
                  [{k: v.detach().cpu() for k, v in t.items()} for t in targets])
    return 100.0 * float(metric.compute()["map_50"])


def map50_by_motion(
    predictions: list[dict[str, torch.Tensor]], targets: list[dict[str, torch.Tensor]], max_detections: int = 100
) -> dict[str, float]:
    """mAP50 (percent) of each FGFA motion category, ``{"slow": .., "medium": .., "fast": ..}``.

    Targets carry ``"motion_iou" [G]`` beside ``"boxes" [G, 4]`` and ``"labels" [G]``. For category c the ground
    truth of c is positive and every other box is ignored (including boxes without a motion IoU, NaN); matching
    and AP follow COCO at IoU 0.5 (torchmetrics' ``map_50``): per image and class the top ``max_detections``
    detections, in descending score, each take the unmatched positive box of highest IoU >= 0.5, else an
    unmatched ignored one (the detection then counts neither as TP nor FP), else are a false positive; AP is the
    101-point interpolated precision, averaged over the classes with positives of c. A category without any
    ground truth in ``targets`` is NaN. With every box in one category this equals ``map50``.
    """
    from tokbench.data.motion import SPEEDS, speed_category

    dets = [{k: v.detach().cpu().numpy() for k, v in p.items()} for p in predictions]
    gts = [{k: v.detach().cpu().numpy() for k, v in t.items()} for t in targets]
    categories = [speed_category(g["motion_iou"]) for g in gts]
    return {str(speed): _map50_positive(dets, gts, [c == speed for c in categories], max_detections)
            for speed in SPEEDS}


def _map50_positive(dets: list[dict], gts: list[dict], positive: list[np.ndarray], max_detections: int) -> float:
    """COCO mAP at IoU 0.5 in percent with the ground truth outside ``positive`` (bool ``[G]`` per image)
    ignored; NaN when no image has a positive box."""
    classes = sorted({int(c) for g, pos in zip(gts, positive, strict=True) for c in g["labels"][pos]})
    if not classes:
        return float("nan")
    aps = []
    for c in classes:
        scores, hits, num_pos = [], [], 0
        for d, g, pos in zip(dets, gts, positive, strict=True):
            det = np.flatnonzero(d["labels"] == c)
            det = det[np.argsort(-d["scores"][det], kind="stable")][:max_detections]
            gt = g["labels"] == c
            is_pos = pos[gt]
            num_pos += int(is_pos.sum())
            outcome = _match(d["boxes"][det].reshape(-1, 4), g["boxes"][gt].reshape(-1, 4), is_pos)
            scores.append(d["scores"][det][outcome >= 0])
            hits.append(outcome[outcome >= 0])
        aps.append(_coco_ap(np.concatenate(scores), np.concatenate(hits), num_pos))
    return 100.0 * float(np.mean(aps))


def _match(det_boxes: np.ndarray, gt_boxes: np.ndarray, is_pos: np.ndarray, iou_thr: float = 0.5) -> np.ndarray:
    """Greedy COCO matching of score-sorted detections ``[D, 4]`` to ground truth ``[G, 4]``: per detection 1
    (true positive), 0 (false positive) or -1 (matched an ignored box, ``is_pos`` False)."""
    from tokbench.data.motion import box_iou_pairwise

    outcome = np.zeros(len(det_boxes), dtype=np.int64)
    if len(gt_boxes) == 0:
        return outcome
    iou = box_iou_pairwise(det_boxes[:, None, :], gt_boxes[None, :, :])  # [D, G]
    taken = np.zeros(len(gt_boxes), dtype=bool)
    for i in range(len(det_boxes)):
        for group, result in ((is_pos, 1), (~is_pos, -1)):  # positives first, as COCO sorts ignored boxes last
            free = group & ~taken & (iou[i] >= iou_thr)
            if free.any():
                j = np.flatnonzero(free)[np.argmax(iou[i][free])]
                taken[j], outcome[i] = True, result
                break
    return outcome


def _coco_ap(scores: np.ndarray, hits: np.ndarray, num_pos: int) -> float:
    """101-point interpolated AP of detections with ``scores`` ``[D]`` and ``hits`` ``[D]`` (1 TP, 0 FP), at
    torchmetrics' recall thresholds (so one category holding every box gives ``map50`` exactly)."""
    from tokbench.intervals import recall_thresholds

    if len(scores) == 0:
        return 0.0  # positives and no detection: nothing is recalled
    order = np.argsort(-scores, kind="mergesort")
    tp = np.cumsum(hits[order] == 1)
    fp = np.cumsum(hits[order] == 0)
    recall = tp / num_pos
    precision = np.maximum.accumulate((tp / np.maximum(tp + fp, np.finfo(np.float64).eps))[::-1])[::-1]
    index = np.searchsorted(recall, recall_thresholds(), side="left")  # torchmetrics' float32 thresholds
    return float(np.where(index < len(precision), precision[np.minimum(index, len(precision) - 1)], 0.0).mean())


def map50_vs_dense(
    predictions: list[dict[str, torch.Tensor]], dense: list[dict[str, torch.Tensor]], score_thr: float = 0.3
) -> float:
    """Fidelity for unlabelled video: mAP50 of pruned detections scored against the dense model's detections
    with ``score > score_thr`` taken as ground truth."""
    return map50(predictions, [dense_targets(d, score_thr) for d in dense])


def dense_targets(dense: dict[str, torch.Tensor], score_thr: float = 0.3) -> dict[str, torch.Tensor]:
    """The dense model's detections of one frame with ``score > score_thr`` as ground truth (fidelity)."""
    keep = dense["scores"] > score_thr
    return {"boxes": dense["boxes"][keep], "labels": dense["labels"][keep]}


def top1(logits: torch.Tensor, labels: torch.Tensor) -> float:
    """Top-1 accuracy in percent: ``logits [B, K]``, ``labels [B]``."""
    return 100.0 * float((logits.argmax(dim=-1) == labels).float().mean())


def top1_agreement(logits: torch.Tensor, dense_logits: torch.Tensor) -> float:
    """Percent of samples whose top-1 class equals the dense model's."""
    return 100.0 * float((logits.argmax(-1) == dense_logits.argmax(-1)).float().mean())


def kl_to_dense(logits: torch.Tensor, dense_logits: torch.Tensor) -> float:
    """Mean ``KL(dense || pruned)`` of the softmax outputs, in nats."""
    return float(F.kl_div(logits.log_softmax(-1), dense_logits.log_softmax(-1), log_target=True,
                          reduction="batchmean"))


def cosine(features: torch.Tensor, dense: torch.Tensor) -> float:
    """Mean cosine similarity to the dense model's features over the last dim: ``[..., C]`` each."""
    return float(F.cosine_similarity(features.flatten(0, -2), dense.flatten(0, -2), dim=-1).mean())
