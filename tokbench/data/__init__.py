"""tokbench's data: the embedded synthetic video benchmark (detection and action recognition) and real video
(folders of video files, ImageNet VID, Kinetics / EPIC-style labelled clips; decoded with PyAV, imported lazily).

Frames are float32 ``[T, 3, H, W]`` RGB in [0, 1] (a tensor or a ``LazyFrames``); detection targets are per frame
``{"boxes": float32 [M, 4] xyxy px, "labels": int64 [M]}`` (torchmetrics' ``MeanAveragePrecision`` format).
Importing this package imports torch, so the CLI imports it inside its commands.
"""

from tokbench.data.imagenet_vid import VID_CLASSES, ImageNetVID
from tokbench.data.kinetics import VIEWS, LabelledVideos, centred_indices, spread_indices
from tokbench.data.synthetic import SPLITS, Clip
from tokbench.data.synthetic_action import ACTION_CLASSES, ActionSpec, SyntheticAction, action_labels
from tokbench.data.synthetic_detect import (
    DETECTION_CLASSES,
    DetectionSpec,
    SyntheticDetection,
    detection_frames,
    detection_stats,
)
from tokbench.data.video import (
    SAMPLES,
    VIDEO_EXTENSIONS,
    LazyFrames,
    VideoFolder,
    crop_offsets,
    fit_size,
    letterbox,
    open_video_data,
    read_frames_at,
    read_video,
    resize_centre_crop,
    resize_short_side,
    sample_path,
    sample_videos,
)

__all__ = [
    "ACTION_CLASSES",
    "DETECTION_CLASSES",
    "SAMPLES",
    "SPLITS",
    "VIDEO_EXTENSIONS",
    "VID_CLASSES",
    "VIEWS",
    "ActionSpec",
    "Clip",
    "DetectionSpec",
    "ImageNetVID",
    "LabelledVideos",
    "LazyFrames",
    "SyntheticAction",
    "SyntheticDetection",
    "VideoFolder",
    "action_labels",
    "centred_indices",
    "crop_offsets",
    "detection_frames",
    "detection_stats",
    "fit_size",
    "letterbox",
    "open_video_data",
    "read_frames_at",
    "read_video",
    "resize_centre_crop",
    "resize_short_side",
    "sample_path",
    "sample_videos",
    "spread_indices",
]
