"""tokbench's data: the embedded synthetic video benchmark (detection and action recognition).

Frames are float32 ``[T, 3, H, W]`` RGB in [0, 1]; detection targets are per frame
``{"boxes": float32 [M, 4] xyxy px, "labels": int64 [M]}`` (torchmetrics' ``MeanAveragePrecision`` format).
Importing this package imports torch, so the CLI imports it inside its commands.
"""

from tokbench.data.synthetic import SPLITS, Clip
from tokbench.data.synthetic_action import ACTION_CLASSES, ActionSpec, SyntheticAction, action_labels
from tokbench.data.synthetic_detect import (
    DETECTION_CLASSES,
    DetectionSpec,
    SyntheticDetection,
    detection_frames,
    detection_stats,
)

__all__ = [
    "ACTION_CLASSES",
    "DETECTION_CLASSES",
    "SPLITS",
    "ActionSpec",
    "Clip",
    "DetectionSpec",
    "SyntheticAction",
    "SyntheticDetection",
    "action_labels",
    "detection_frames",
    "detection_stats",
]
