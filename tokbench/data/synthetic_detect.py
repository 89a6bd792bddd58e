"""Synthetic VID: procedurally generated detection clips, tokbench's embedded default detection benchmark.

Each clip is a slowly panning textured background with 1-4 objects of six classes (shape and colour/texture both
differ per class) that move at 1.5-7 px/frame, bounce off the frame edges, breathe in scale, spin, and overlap in
depth order. Like ImageNet VID most of the frame is background, and at patch 16 with every 4th frame kept the
objects move about one patch per kept frame (``detection_stats`` measures both).

Motion is closed-form in time (bouncing is a triangle wave), so any frame of any clip can be drawn on its own:
``SyntheticDetection`` draws clips, ``detection_frames`` draws independent single frames for training detectors.
Clip ``i`` of a split is a function of ``(seed, split, i)`` only; it does not depend on ``num_frames`` (a shorter
clip is a prefix of a longer one) or on the number of clips.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import asdict, dataclass, replace

import numpy as np
import torch

from tokbench.data.synthetic import (
    SHAPES,
    TEXTURES,
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

DETECTION_CLASSES = SHAPES
DEFAULT_NUM_CLIPS = {"train": 1024, "val": 64, "test": 64}
SPEC_VERSION = 1
_STREAM_CLIPS, _STREAM_FRAMES = 1, 2  # seed streams of SyntheticDetection and detection_frames

# Per class: base RGB colour and texture, so classes differ in appearance as well as in shape.
_PALETTE = np.array(
    [
        [0.90, 0.30, 0.15],  # disc: red-orange
        [0.20, 0.35, 0.90],  # square: blue
        [0.20, 0.78, 0.25],  # triangle: green
        [0.95, 0.85, 0.20],  # ring: yellow
        [0.80, 0.20, 0.80],  # cross: magenta
        [0.20, 0.85, 0.90],  # star: cyan
    ]
)
_CLASS_TEXTURE = tuple(TEXTURES.index(t) for t in ("radial", "checker", "stripes", "flat", "rings", "dots"))


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


def _target(scene: _Scene, boxes: np.ndarray, keep: np.ndarray) -> dict[str, torch.Tensor]:
    return {
        "boxes": torch.from_numpy(boxes[keep].astype(np.float32)).reshape(-1, 4),
        "labels": torch.from_numpy(scene.labels[keep].astype(np.int64)),
    }


class SyntheticDetection(SyntheticClips):
    """Deterministic synthetic detection clips (see module docstring); a map-style dataset of ``Clip``.

    ``dataset[i]`` is a ``Clip`` with ``frames`` float32 ``[num_frames, 3, size, size]`` in [0, 1], ``targets``
    (per frame ``{"boxes": float32 [M, 4] xyxy px, "labels": int64 [M]}``) and ``track_ids`` (per frame int64
    ``[M]``). ``num_clips`` defaults to ``DEFAULT_NUM_CLIPS[split]``. ``generator_spec`` sets the remaining
    generator settings; ``size`` and ``num_frames`` always override its own.
    """

    class_names = DETECTION_CLASSES
    default_num_clips = DEFAULT_NUM_CLIPS
    spec_type = DetectionSpec

    def __init__(
        self,
        split: str = "val",
        num_clips: int | None = None,
        num_frames: int = 32,
        size: int = 320,
        seed: int = 0,
        generator_spec: DetectionSpec | None = None,
    ) -> None:
        super().__init__(split, num_clips, num_frames, size, seed, generator_spec)

    def _scene(self, index: int) -> _Scene:
        self._check_index(index)
        return _sample_scene(make_rng(self.seed, self._split_id, _STREAM_CLIPS, index, 0), self.generator_spec)

    def __getitem__(self, index: int) -> Clip:
        scene = self._scene(index)
        frames, targets, track_ids = [], [], []
        for t in range(self.num_frames):
            noise_rng = make_rng(self.seed, self._split_id, _STREAM_CLIPS, index, t + 1)
            stamps = _object_stamps(scene, t)
            frames.append(_render(scene, stamps, t, self.generator_spec, noise_rng))
            boxes, keep = _annotate(stamps, self.size, self.generator_spec)
            targets.append(_target(scene, boxes, keep))
            track_ids.append(torch.from_numpy(np.flatnonzero(keep).astype(np.int64)))
        return Clip(
            frames=frames_to_tensor(frames),
            clip_id=f"synthetic-vid/{self.split}/seed{self.seed}/{index:05d}",
            targets=targets,
            track_ids=track_ids,
        )

    def annotations(self, index: int) -> tuple[np.ndarray, list[np.ndarray]]:
        """Labels ``[M]`` and per-frame boxes ``[M, 4]`` with NaN rows for dropped objects, without drawing pixels.

        Row ``k`` of every frame is object ``k``, so box centres can be followed over time.
        """
        scene = self._scene(index)
        per_frame = []
        for t in range(self.num_frames):
            boxes, keep = _annotate(_object_stamps(scene, t), self.size, self.generator_spec)
            boxes[~keep] = np.nan
            per_frame.append(boxes)
        return scene.labels.copy(), per_frame

    def spec(self) -> dict:
        """The data specification, for model cards and run provenance."""
        return {
            "name": "synthetic-vid",
            "task": "detection",
            "spec_version": SPEC_VERSION,
            "split": self.split,
            "seed": self.seed,
            "num_clips": self.num_clips,
            "class_names": list(self.class_names),
            "frames": "float32 [T, 3, H, W] RGB in [0, 1]",
            "targets": "per frame {'boxes': float32 [M, 4] xyxy px, 'labels': int64 [M]}",
            "seeding": "numpy SeedSequence([salt, seed, split_id, stream, clip_index, frame_or_0])",
            **asdict(self.generator_spec),
        }


def detection_frames(
    split: str = "train",
    n: int = 1000,
    seed: int = 0,
    size: int = 320,
    generator_spec: DetectionSpec | None = None,
) -> Iterator[tuple[torch.Tensor, dict[str, torch.Tensor]]]:
    """``n`` independent single frames for detector training: ``(frame [3, H, W], target)`` pairs.

    Frame ``i`` is a fresh random scene seen at a random time in [0, 128) frames, drawn from a seed stream
    disjoint from the clips of ``SyntheticDetection``; it depends only on ``(seed, split, i)``.
    """
    spec = replace(generator_spec or DetectionSpec(), size=size)
    check_dims(size, 1, n)
    sid = split_id(split)
    for i in range(n):
        rng = make_rng(seed, sid, _STREAM_FRAMES, i, 0)
        scene = _sample_scene(rng, spec)
        t = float(rng.integers(0, 128))
        stamps = _object_stamps(scene, t)
        frame = _render(scene, stamps, t, spec, make_rng(seed, sid, _STREAM_FRAMES, i, 1))
        boxes, keep = _annotate(stamps, spec.size, spec)
        yield torch.from_numpy(frame), _target(scene, boxes, keep)


def detection_stats(
    dataset: SyntheticDetection, patch_px: int = 16, stride_frames: int = 4, max_clips: int | None = None
) -> dict:
    """Statistics of a detection split, computed from annotations (no pixels drawn).

    ``coverage_frac``: mean over frames of the area of the union of boxes / frame area.
    ``box_area_frac``: mean area of one box / frame area.
    ``center_disp_patches_per_frame`` / ``center_disp_patches_per_stride``: mean distance, in patches of
    ``patch_px``, travelled by a box centre between frames t and t + 1 / t + ``stride_frames`` (objects visible
    in both frames). ``objects_per_frame``: mean number of boxes. ``class_histogram``: boxes per class name.
    """
    num_clips = len(dataset) if max_clips is None else min(max_clips, len(dataset))
    S = dataset.size
    coverage, box_area, disp_1, disp_s, counts = [], [], [], [], []
    histogram = np.zeros(len(dataset.class_names), dtype=np.int64)
    for i in range(num_clips):
        labels, per_frame = dataset.annotations(i)
        for boxes in per_frame:
            present = ~np.isnan(boxes[:, 0])
            union = np.zeros((S, S), dtype=bool)
            for x1, y1, x2, y2 in np.round(boxes[present]).astype(int):
                union[y1:y2, x1:x2] = True
            coverage.append(union.mean())
            box_area.extend((boxes[present, 2] - boxes[present, 0]) * (boxes[present, 3] - boxes[present, 1]) / S**2)
            counts.append(int(present.sum()))
            histogram += np.bincount(labels[present], minlength=len(histogram))
        centres = np.stack([(b[:, :2] + b[:, 2:]) / 2 for b in per_frame])  # [T, M, 2], NaN where dropped
        for lag, out in ((1, disp_1), (stride_frames, disp_s)):
            step = np.linalg.norm(centres[lag:] - centres[:-lag], axis=-1) if len(centres) > lag else np.zeros(0)
            out.extend(step[~np.isnan(step)].tolist())
    return {
        "num_clips": num_clips,
        "num_frames": dataset.num_frames,
        "size_px": S,
        "patch_px": patch_px,
        "stride_frames": stride_frames,
        "coverage_frac": float(np.mean(coverage)),
        "box_area_frac": float(np.mean(box_area)) if box_area else 0.0,
        "objects_per_frame": float(np.mean(counts)),
        "empty_frame_frac": float(np.mean(np.array(counts) == 0)),
        "center_disp_patches_per_frame": float(np.mean(disp_1)) / patch_px if disp_1 else float("nan"),
        "center_disp_patches_per_stride": float(np.mean(disp_s)) / patch_px if disp_s else float("nan"),
        "class_histogram": dict(zip(dataset.class_names, histogram.tolist(), strict=True)),
    }
