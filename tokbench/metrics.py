"""Quality metrics: mAP50 as the paper reports it, top-1, and fidelity to the dense model."""

from __future__ import annotations

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


def map50_vs_dense(
    predictions: list[dict[str, torch.Tensor]], dense: list[dict[str, torch.Tensor]], score_thr: float = 0.3
) -> float:
    """Fidelity for unlabelled video: mAP50 of pruned detections scored against the dense model's detections
    with ``score > score_thr`` taken as ground truth."""
    pseudo = [{"boxes": d["boxes"][d["scores"] > score_thr], "labels": d["labels"][d["scores"] > score_thr]}
              for d in dense]
    return map50(predictions, pseudo)


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
