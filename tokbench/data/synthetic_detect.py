"""Synthetic VID: procedurally generated detection clips, tokbench's embedded detection benchmark, in two versions.

``version=2`` (``synthvid``, the default) is calibrated to ImageNet VID val: motion-IoU speed mix, box sizes tied
to speed, mostly one object, a hand-held camera, lighting drift (``synthetic_detect_v2``).
``version=1`` (``synthvid-fast``, frozen: bit-identical frames and boxes) is a slowly panning textured background
with 1-4 objects of six classes (shape and colour/texture both differ per class) that move at 1.5-7 px/frame,
bounce off the frame edges, breathe in scale, spin, and overlap in depth order; almost all of them are small and
fast by VID's standards (``detection_stats`` measures this).

Motion is closed-form in time (bouncing is a triangle wave), so any frame of any clip can be drawn on its own:
``SyntheticDetection`` draws clips, ``detection_frames`` draws independent single frames for training detectors.
Clip ``i`` of a split is a function of ``(seed, split, i)`` only; its frames and boxes do not depend on
``num_frames`` (a shorter clip is a prefix of a longer one) or on the number of clips. Its ``motion_iou`` targets
are computed over the clip's own frames, so they do depend on ``num_frames`` near the end of the clip.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, replace

import numpy as np
import torch

from tokbench.data import synthetic_detect_v2 as v2
from tokbench.data.motion import box_stats, motion_iou
from tokbench.data.synthetic import (
    DETECTION_PALETTE,
    DETECTION_TEXTURES,
    SHAPES,
    Clip,
    Stamp,
    SyntheticClips,
    add_sensor_noise,
    check_dims,
    crop,
    frames_to_tensor,
    make_rng,
    paste,
    random_colour,
    rasterise,
    reflect,
    split_id,
    textured_background,
)
from tokbench.errors import ConfigError

DETECTION_CLASSES = SHAPES
DEFAULT_NUM_CLIPS = {"train": 1024, "val": 64, "test": 64}
SPEC_VERSION = 2  # the default version of SyntheticDetection
_STREAM_CLIPS, _STREAM_FRAMES = 1, 2  # v1 seed streams of SyntheticDetection and detection_frames

_PALETTE, _CLASS_TEXTURE = DETECTION_PALETTE, DETECTION_TEXTURES


@dataclass(frozen=True)
class DetectionSpec:
    """Generator settings. Lengths are pixels, speeds pixels per frame (tuned for patch 16, stride 4)."""

    size: int = 320
    num_frames: int = 32
    objects_per_clip: tuple[int, int] = (1, 4)
    radius_frac: tuple[float, float] = (0.05, 0.17)  # object radius / frame size, log-uniform
    speed_px_per_frame: tuple[float, float] = (1.5, 7.0)
    scale_swing: tuple[float, float] = (0.1, 0.3)  # radius(t) = r0 * (1 + swing * sin(...))
    scale_period_frames: tuple[float, float] = (48.0, 160.0)
    spin_deg_per_frame: float = 3.0
    wobble_px: float = 6.0  # amplitude of a sideways sinusoid on top of straight motion
    pan_px_per_frame: tuple[float, float] = (0.3, 1.5)
    pan_margin_frac: float = 0.15  # the camera pans over a canvas of size * (1 + 2 * pan_margin_frac)
    noise_std: float = 0.01
    min_box_side_px: float = 8.0  # smaller visible boxes are dropped from the targets
    min_visible_frac: float = 0.2  # objects with less of their area in view and unoccluded are dropped


@dataclass(frozen=True)
class _Scene:
    """Everything random about one clip; per-object arrays have length M, in drawing (back-to-front) order."""

    background: np.ndarray  # [3, C, C]
    cam_start: np.ndarray  # [2] (top, left) offset into the canvas at t = 0
    cam_velocity: np.ndarray  # [2] px/frame
    cam_range: float  # the camera offset bounces in [0, cam_range]
    labels: np.ndarray  # [M] class ids
    colours: np.ndarray  # [M, 3]
    start: np.ndarray  # [M, 2] unbounded centre (x, y) at t = 0
    velocity: np.ndarray  # [M, 2] px/frame
    bounds: np.ndarray  # [M, 2] (lo, hi) range the centre bounces in, both axes
    radius: np.ndarray  # [M]
    swing: np.ndarray  # [M]
    swing_freq: np.ndarray  # [M] rad/frame
    swing_phase: np.ndarray  # [M]
    angle: np.ndarray  # [M] rad at t = 0
    spin: np.ndarray  # [M] rad/frame
    wobble: np.ndarray  # [M] px
    wobble_freq: np.ndarray  # [M] rad/frame
    wobble_phase: np.ndarray  # [M]


def _sample_scene(rng: np.random.Generator, spec: DetectionSpec) -> _Scene:
    S = spec.size
    margin = int(round(spec.pan_margin_frac * S))
    background = textured_background(rng, S + 2 * margin)
    pan_dir = rng.uniform(0, 2 * np.pi)
    cam_velocity = rng.uniform(*spec.pan_px_per_frame) * np.array([np.sin(pan_dir), np.cos(pan_dir)])

    M = int(rng.integers(spec.objects_per_clip[0], spec.objects_per_clip[1] + 1))
    labels = rng.integers(0, len(DETECTION_CLASSES), size=M)
    log_r = rng.uniform(*np.log(spec.radius_frac), size=M)
    radius = np.exp(log_r) * S
    heading = rng.uniform(0, 2 * np.pi, size=M)
    speed = rng.uniform(*spec.speed_px_per_frame, size=M)
    # The centre may leave the frame by 0.3 radii, so objects get cut by the border but never vanish for long.
    bounds = np.stack([-0.3 * radius, S + 0.3 * radius], axis=1)
    return _Scene(
        background=background,
        cam_start=rng.uniform(0, 2 * margin, size=2),
        cam_velocity=cam_velocity,
        cam_range=float(2 * margin),
        labels=labels,
        colours=np.stack([random_colour(rng, _PALETTE[c], jitter=0.08) for c in labels]),
        start=rng.uniform(0, S, size=(M, 2)),
        velocity=speed[:, None] * np.stack([np.cos(heading), np.sin(heading)], axis=1),
        bounds=bounds,
        radius=radius,
        swing=rng.uniform(*spec.scale_swing, size=M),
        swing_freq=2 * np.pi / rng.uniform(*spec.scale_period_frames, size=M),
        swing_phase=rng.uniform(0, 2 * np.pi, size=M),
        angle=rng.uniform(0, 2 * np.pi, size=M),
        spin=np.deg2rad(rng.uniform(-spec.spin_deg_per_frame, spec.spin_deg_per_frame, size=M)),
        wobble=rng.uniform(0, spec.wobble_px, size=M),
        wobble_freq=2 * np.pi / rng.uniform(16, 64, size=M),
        wobble_phase=rng.uniform(0, 2 * np.pi, size=M),
    )


def _object_stamps(scene: _Scene, t: float) -> list[Stamp]:
    """All objects of ``scene`` rasterised at time ``t``, back to front."""
    direction = scene.velocity / np.linalg.norm(scene.velocity, axis=1, keepdims=True)
    sideways = np.stack([-direction[:, 1], direction[:, 0]], axis=1)
    wobble = scene.wobble * np.sin(scene.wobble_freq * t + scene.wobble_phase)
    free = scene.start + scene.velocity * t + wobble[:, None] * sideways
    centre = reflect(free, scene.bounds[:, :1], scene.bounds[:, 1:])
    radius = scene.radius * (1 + scene.swing * np.sin(scene.swing_freq * t + scene.swing_phase))
    angle = scene.angle + scene.spin * t
    return [
        rasterise(int(c), _CLASS_TEXTURE[c], scene.colours[k], centre[k, 0], centre[k, 1], radius[k], angle[k])
        for k, c in enumerate(scene.labels)
    ]


def _annotate(stamps: list[Stamp], size: int, spec: DetectionSpec) -> tuple[np.ndarray, np.ndarray]:
    """Boxes ``[M, 4]`` (xyxy px, tight around each full mask, clipped to the frame) and a keep flag ``[M]``.

    An object is kept when its clipped box has both sides >= ``min_box_side_px`` and at least
    ``min_visible_frac`` of its mask is inside the frame and not covered by objects drawn after it.
    """
    owner = np.full((size, size), -1, dtype=np.int16)  # which object each pixel shows, -1 = background
    boxes = np.zeros((len(stamps), 4))
    full_area = np.zeros(len(stamps))
    for k, stamp in enumerate(stamps):
        rows, cols = np.flatnonzero(stamp.mask.any(axis=1)), np.flatnonzero(stamp.mask.any(axis=0))
        boxes[k] = [stamp.x0 + cols[0], stamp.y0 + rows[0], stamp.x0 + cols[-1] + 1, stamp.y0 + rows[-1] + 1]
        full_area[k] = stamp.mask.sum()
        regions = stamp.overlap(size, size)
        if regions is not None:
            owner[regions[0]][stamp.mask[regions[1]]] = k
    boxes = np.clip(boxes, 0, size)
    visible = np.bincount(owner.ravel() + 1, minlength=len(stamps) + 1)[1:]
    sides = np.minimum(boxes[:, 2] - boxes[:, 0], boxes[:, 3] - boxes[:, 1])
    keep = (sides >= spec.min_box_side_px) & (visible >= spec.min_visible_frac * full_area)
    return boxes, keep


def _render(
    scene: _Scene, stamps: list[Stamp], t: float, spec: DetectionSpec, noise_rng: np.random.Generator
) -> np.ndarray:
    """Frame ``t`` of ``scene`` with its objects ``stamps``, float32 ``[3, size, size]`` in [0, 1]."""
    top, left = reflect(scene.cam_start + scene.cam_velocity * t, 0.0, scene.cam_range)
    frame = crop(scene.background, top, left, spec.size)
    for stamp in stamps:
        paste(frame, stamp)
    return add_sensor_noise(frame, noise_rng, spec.noise_std)


def _target(labels: np.ndarray, boxes: np.ndarray, keep: np.ndarray) -> dict[str, torch.Tensor]:
    """Target of one frame from all objects' ``labels`` ``[M]``, ``boxes`` ``[M, 4]`` and ``keep`` ``[M]``."""
    return {
        "boxes": torch.from_numpy(boxes[keep].astype(np.float32)).reshape(-1, 4),
        "labels": torch.from_numpy(labels[keep].astype(np.int64)),
    }


@dataclass(frozen=True)
class _Version:
    """How one spec version draws: its settings type, seed streams, scene sampler, rasteriser and renderer.

    ``frame_times``: ``detection_frames`` looks at each scene at a random integer time in ``[0, frame_times)``.
    """

    spec_type: type
    clip_stream: int
    frame_stream: int
    frame_times: int
    sample: Callable  # (rng, spec) -> scene
    stamps: Callable  # (scene, t, spec) -> list[Stamp]
    render: Callable  # (scene, stamps, t, spec, noise_rng) -> [3, size, size]
    clip_prefix: str


VERSIONS = {
    1: _Version(DetectionSpec, _STREAM_CLIPS, _STREAM_FRAMES, 128, _sample_scene,
                lambda scene, t, spec: _object_stamps(scene, t), _render, "synthetic-vid"),
    2: _Version(v2.DetectionSpecV2, 5, 6, 32, v2.sample_scene,
                lambda scene, t, spec: v2.object_stamps(scene, t, spec.size),
                lambda scene, stamps, t, spec, rng: v2.render(scene, stamps, t, spec.size, rng), "synthetic-vid-v2"),
}


def _version(version: int, generator_spec=None) -> _Version:
    if version not in VERSIONS:
        raise ConfigError(f"unknown synthetic detection spec version {version}; known: {sorted(VERSIONS)}")
    kind = VERSIONS[version]
    if generator_spec is not None and not isinstance(generator_spec, kind.spec_type):
        raise ConfigError(f"spec version {version} takes a {kind.spec_type.__name__}, "
                          f"got a {type(generator_spec).__name__}")
    return kind


class SyntheticDetection(SyntheticClips):
    """Deterministic synthetic detection clips (see module docstring); a map-style dataset of ``Clip``.

    ``dataset[i]`` is a ``Clip`` with ``frames`` float32 ``[num_frames, 3, size, size]`` in [0, 1], ``targets``
    (per frame ``{"boxes": float32 [M, 4] xyxy px, "labels": int64 [M], "motion_iou": float32 [M]}``, the motion
    IoU of each box over the clip's frames, NaN for a box whose object is in no other frame of its +-10 window)
    and ``track_ids`` (per frame int64 ``[M]``). ``version`` picks the generator (2: VID-calibrated ``synthvid``,
    1: the frozen ``synthvid-fast``). ``num_clips`` defaults to ``DEFAULT_NUM_CLIPS[split]``. ``generator_spec``
    (a ``DetectionSpec`` for version 1, ``DetectionSpecV2`` for 2) sets the remaining generator settings;
    ``size`` and ``num_frames`` always override its own.
    """

    class_names = DETECTION_CLASSES
    default_num_clips = DEFAULT_NUM_CLIPS

    def __init__(
        self,
        split: str = "val",
        num_clips: int | None = None,
        num_frames: int = 32,
        size: int = 320,
        seed: int = 0,
        generator_spec: DetectionSpec | v2.DetectionSpecV2 | None = None,
        version: int = SPEC_VERSION,
    ) -> None:
        self._kind = _version(version, generator_spec)
        self.version = version
        self.spec_type = self._kind.spec_type
        super().__init__(split, num_clips, num_frames, size, seed, generator_spec)

    def _scene(self, index: int):
        self._check_index(index)
        rng = make_rng(self.seed, self._split_id, self._kind.clip_stream, index, 0)
        if self.version == 1:
            return self._kind.sample(rng, self.generator_spec)
        quantiles = v2.strata(make_rng(self.seed, self._split_id, self._kind.clip_stream), index)
        return self._kind.sample(rng, self.generator_spec, quantiles)

    def __getitem__(self, index: int) -> Clip:
        scene, spec = self._scene(index), self.generator_spec
        frames, all_boxes, keeps = [], [], []
        for t in range(self.num_frames):
            noise_rng = make_rng(self.seed, self._split_id, self._kind.clip_stream, index, t + 1)
            stamps = self._kind.stamps(scene, t, spec)
            frames.append(self._kind.render(scene, stamps, t, spec, noise_rng))
            boxes, keep = _annotate(stamps, self.size, spec)
            all_boxes.append(boxes)
            keeps.append(keep)
        boxes, keep = np.stack(all_boxes), np.stack(keeps)  # [T, M, 4], [T, M]
        miou = motion_iou(np.where(keep[..., None], boxes, np.nan)).astype(np.float32)  # [T, M]
        targets = [_target(scene.labels, b, k) | {"motion_iou": torch.from_numpy(m[k])}
                   for b, k, m in zip(boxes, keep, miou, strict=True)]
        return Clip(
            frames=frames_to_tensor(frames),
            clip_id=f"{self._kind.clip_prefix}/{self.split}/seed{self.seed}/{index:05d}",
            targets=targets,
            track_ids=[torch.from_numpy(np.flatnonzero(k).astype(np.int64)) for k in keep],
        )

    def annotations(self, index: int) -> tuple[np.ndarray, list[np.ndarray]]:
        """Labels ``[M]`` and per-frame boxes ``[M, 4]`` with NaN rows for dropped objects, without drawing pixels.

        Row ``k`` of every frame is object ``k``, so box centres can be followed over time.
        """
        scene = self._scene(index)
        per_frame = []
        for t in range(self.num_frames):
            boxes, keep = _annotate(self._kind.stamps(scene, t, self.generator_spec), self.size, self.generator_spec)
            boxes[~keep] = np.nan
            per_frame.append(boxes)
        return scene.labels.copy(), per_frame

    def spec(self) -> dict:
        """The data specification, for model cards and run provenance."""
        return {
            "name": "synthvid" if self.version == 2 else "synthvid-fast",
            "task": "detection",
            "spec_version": self.version,
            "split": self.split,
            "seed": self.seed,
            "num_clips": self.num_clips,
            "class_names": list(self.class_names),
            "frames": "float32 [T, 3, H, W] RGB in [0, 1]",
            "targets": "per frame {'boxes': float32 [M, 4] xyxy px, 'labels': int64 [M], "
                       "'motion_iou': float32 [M] (FGFA, +-10 frames within the clip)}",
            "seeding": "numpy SeedSequence([salt, seed, split_id, stream, clip_index, frame_or_0])",
            **asdict(self.generator_spec),
        }


def detection_frames(
    split: str = "train",
    n: int = 1000,
    seed: int = 0,
    size: int = 320,
    generator_spec: DetectionSpec | v2.DetectionSpecV2 | None = None,
    version: int = SPEC_VERSION,
) -> Iterator[tuple[torch.Tensor, dict[str, torch.Tensor]]]:
    """``n`` independent single frames for detector training: ``(frame [3, H, W], target)`` pairs.

    Frame ``i`` is a fresh random scene of spec ``version`` seen at a random time (in [0, 128) frames for
    version 1, [0, 32) for version 2), drawn from a seed stream disjoint from the clips of ``SyntheticDetection``;
    it depends only on ``(seed, split, i)``. Targets are ``{"boxes" [M, 4], "labels" [M]}`` (no motion IoU: a
    single frame has no neighbours).
    """
    kind = _version(version, generator_spec)
    spec = replace(generator_spec or kind.spec_type(), size=size)
    check_dims(size, 1, n)
    sid = split_id(split)
    for i in range(n):
        rng = make_rng(seed, sid, kind.frame_stream, i, 0)
        scene = kind.sample(rng, spec)
        t = float(rng.integers(0, kind.frame_times))
        stamps = kind.stamps(scene, t, spec)
        frame = kind.render(scene, stamps, t, spec, make_rng(seed, sid, kind.frame_stream, i, 1))
        boxes, keep = _annotate(stamps, spec.size, spec)
        yield torch.from_numpy(frame), _target(scene.labels, boxes, keep)


def detection_stats(
    dataset: SyntheticDetection, patch_px: int = 16, stride_frames: int = 4, max_clips: int | None = None
) -> dict:
    """Statistics of a detection split, computed from annotations (no pixels drawn).

    ``coverage_frac``: mean over frames of the area of the union of boxes / frame area.
    ``box_area_frac``: mean area of one box / frame area.
    ``center_disp_patches_per_frame`` / ``center_disp_patches_per_stride``: mean distance, in patches of
    ``patch_px``, travelled by a box centre between frames t and t + 1 / t + ``stride_frames`` (objects visible
    in both frames). ``class_histogram``: boxes per class name. The motion-IoU speed shares, box-area
    distribution and object counts of ``motion.box_stats`` are merged in (``slow_pct``, ``box_area_frac_mean``,
    ``objects_per_frame``, ``empty_frame_pct``, ...).
    """
    num_clips = len(dataset) if max_clips is None else min(max_clips, len(dataset))
    S = dataset.size
    coverage, disp_1, disp_s, clips = [], [], [], []
    histogram = np.zeros(len(dataset.class_names), dtype=np.int64)
    for i in range(num_clips):
        labels, per_frame = dataset.annotations(i)
        for boxes in per_frame:
            present = ~np.isnan(boxes[:, 0])
            union = np.zeros((S, S), dtype=bool)
            for x1, y1, x2, y2 in np.round(boxes[present]).astype(int):
                union[y1:y2, x1:x2] = True
            coverage.append(union.mean())
            histogram += np.bincount(labels[present], minlength=len(histogram))
        clips.append(np.stack(per_frame))  # [T, M, 4], NaN where dropped
        centres = (clips[-1][..., :2] + clips[-1][..., 2:]) / 2  # [T, M, 2]
        for lag, out in ((1, disp_1), (stride_frames, disp_s)):
            step = np.linalg.norm(centres[lag:] - centres[:-lag], axis=-1) if len(centres) > lag else np.zeros(0)
            out.extend(step[~np.isnan(step)].tolist())
    return {
        "num_clips": num_clips,
        "num_frames": dataset.num_frames,
        "size_px": S,
        "patch_px": patch_px,
        "stride_frames": stride_frames,
        "spec_version": dataset.version,
        "coverage_frac": float(np.mean(coverage)),
        "center_disp_patches_per_frame": float(np.mean(disp_1)) / patch_px if disp_1 else float("nan"),
        "center_disp_patches_per_stride": float(np.mean(disp_s)) / patch_px if disp_s else float("nan"),
        "class_histogram": dict(zip(dataset.class_names, histogram.tolist(), strict=True)),
        **box_stats(clips, frame_area=S**2),
    }
