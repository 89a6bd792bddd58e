"""tokbench's data: the embedded synthetic video benchmark (detection and action recognition) and real video
(folders of video files, ImageNet VID, Kinetics / EPIC-style labelled clips; decoded with PyAV, imported lazily).

Frames are float32 ``[T, 3, H, W]`` RGB in [0, 1] (a tensor or a ``LazyFrames``); detection targets are per frame
``{"boxes": float32 [M, 4] xyxy px, "labels": int64 [M]}`` (torchmetrics' ``MeanAveragePrecision`` format), plus
``"motion_iou": float32 [M]`` on the synthetic clips. ``DETECTION_BENCHMARKS`` names the embedded detection
benchmarks: ``synthvid`` (spec v2, calibrated to ImageNet VID) and ``synthvid-fast`` (spec v1).
Importing this package imports torch, so the CLI imports it inside its commands.
"""

from functools import partial

from tokbench.data.imagenet_vid import VID_CLASSES, ImageNetVID
from tokbench.data.kinetics import VIEWS, LabelledVideos, centred_indices, spread_indices
from tokbench.data.motion import SPEEDS, Speed, box_stats, check_calibration, motion_iou, speed_category
from tokbench.data.synthetic import SPLITS, Clip
from tokbench.data.synthetic_action import ACTION_CLASSES, ActionSpec, SyntheticAction, action_labels
from tokbench.data.synthetic_detect import (
    DETECTION_CLASSES,
    SPEC_VERSION,
    DetectionSpec,
    SyntheticDetection,
    detection_frames,
    detection_stats,
)
from tokbench.data.synthetic_detect_v2 import DetectionSpecV2
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

# name -> constructor taking SyntheticDetection's arguments (split, num_clips, num_frames, size, seed, ...)
DETECTION_BENCHMARKS = {
    "synthvid": partial(SyntheticDetection, version=2),
    "synthvid-fast": partial(SyntheticDetection, version=1),
}


def detection_benchmark(name: str, split: str = "val", **kwargs) -> SyntheticDetection:
    """The embedded detection benchmark ``name`` (a key of ``DETECTION_BENCHMARKS``) for ``split``."""
    from tokbench.errors import unknown_name

    if name not in DETECTION_BENCHMARKS:
        raise unknown_name("detection benchmark", name, tuple(DETECTION_BENCHMARKS))
    return DETECTION_BENCHMARKS[name](split, **kwargs)


__all__ = [
    "ACTION_CLASSES",
    "DETECTION_BENCHMARKS",
    "DETECTION_CLASSES",
    "SAMPLES",
    "SPEC_VERSION",
    "SPEEDS",
    "SPLITS",
    "VIDEO_EXTENSIONS",
    "VID_CLASSES",
    "VIEWS",
    "ActionSpec",
    "Clip",
    "DetectionSpec",
    "DetectionSpecV2",
    "ImageNetVID",
    "LabelledVideos",
    "LazyFrames",
    "SyntheticAction",
    "Speed",
    "SyntheticDetection",
    "VideoFolder",
    "action_labels",
    "box_stats",
    "centred_indices",
    "check_calibration",
    "crop_offsets",
    "detection_benchmark",
    "detection_frames",
    "detection_stats",
    "fit_size",
    "letterbox",
    "motion_iou",
    "open_video_data",
    "read_frames_at",
    "read_video",
    "resize_centre_crop",
    "resize_short_side",
    "sample_path",
    "sample_videos",
    "speed_category",
    "spread_indices",
]
