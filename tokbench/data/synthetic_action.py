"""Synthetic action recognition: one textured object whose motion over the clip is the class.

Classes: move left/right/up/down, rotate clockwise/counter-clockwise, grow, shrink. Shape, texture, colour,
background, camera pan and the object's size and position at the middle frame are drawn independently of the
class, so the middle frame carries no class information at all and any other single frame only a weak hint
(where along its path, or how far into its growth, the object is). Motion amounts are set per clip (travel,
turn and scale change over the whole clip), so ``num_frames`` sets the temporal resolution, not the motion.

Every clip also carries small class-independent nuisance motion (drift, spin, scale change, camera pan), so that
"the object stands still" identifies no class. Labels are balanced: each block of ``len(ACTION_CLASSES)``
consecutive clips holds every class once, in a seeded random order. Every object carries a hand in its
complementary colour (spec version 2), so that a turn is visible whatever the symmetry of its shape and texture.
"""

from __future__ import annotations

import colorsys
from dataclasses import asdict, dataclass

import numpy as np
import torch

from tokbench.data.synthetic import (
    SHAPES,
    TEXTURES,
    Clip,
    Stamp,
    SyntheticClips,
    add_sensor_noise,
    crop,
    frames_to_tensor,
    make_rng,
    paste,
    rasterise,
    textured_background,
)

ACTION_CLASSES = ("move_left", "move_right", "move_up", "move_down", "rotate_cw", "rotate_ccw", "grow", "shrink")
DEFAULT_NUM_CLIPS = {"train": 2048, "val": 64, "test": 64}
SPEC_VERSION = 2
_STREAM_CLIPS, _STREAM_LABELS = 3, 4
_DIRECTIONS = {"move_left": (-1, 0), "move_right": (1, 0), "move_up": (0, -1), "move_down": (0, 1)}
# Textures that make a turn visible even on a disc or ring (radial, flat and rings are rotation-symmetric).
_TEXTURES = tuple(TEXTURES.index(t) for t in ("checker", "stripes", "dots"))


@dataclass(frozen=True)
class ActionSpec:
    """Generator settings. ``*_frac`` are fractions of the frame size; motion amounts are per whole clip."""

    size: int = 160
    num_frames: int = 16
    radius_frac: tuple[float, float] = (0.09, 0.15)  # object radius at the middle frame
    travel_frac: tuple[float, float] = (0.2, 0.3)  # move_* classes
    turn_deg: tuple[float, float] = (90.0, 180.0)  # rotate_* classes
    scale_factor: tuple[float, float] = (1.5, 2.0)  # grow / shrink: radius ratio last / first frame
    nuisance_drift_frac: float = 0.04  # every class: at most this much drift in a random direction
    nuisance_turn_deg: float = 15.0
    nuisance_scale_factor: float = 1.1
    pan_frac: float = 0.1  # camera pan over the clip, random direction
    pan_margin_frac: float = 0.15
    edge_slack: float = 0.4  # the object may leave the frame by this fraction of its radius
    noise_std: float = 0.01
    orientation_marker: bool = True  # a hand in the complementary colour, so every object's turn is visible


@dataclass(frozen=True)
class _Scene:
    """Everything random about one clip. Motion is linear (log-linear for the radius) in ``t - (T - 1) / 2``."""

    background: np.ndarray  # [3, C, C]
    cam_mid: np.ndarray  # [2] (top, left) canvas offset at the middle frame
    cam_velocity: np.ndarray  # [2] px/frame
    shape: int
    texture: int
    colour: np.ndarray  # [3]
    mid: np.ndarray  # [2] centre (x, y) at the middle frame
    velocity: np.ndarray  # [2] px/frame
    radius: float  # at the middle frame
    growth: float  # d log(radius) / dt
    angle: float  # at the middle frame, rad
    spin: float  # rad/frame, positive = clockwise on screen


def _plus_minus(rng: np.random.Generator, bound: float) -> float:
    return float(rng.uniform(-bound, bound))


def _sample_scene(rng: np.random.Generator, label: int, spec: ActionSpec) -> _Scene:
    S, T = spec.size, spec.num_frames
    steps = max(T - 1, 1)
    margin = int(round(spec.pan_margin_frac * S))
    background = textured_background(rng, S + 2 * margin)
    pan = spec.pan_frac * S
    pan_dir = rng.uniform(0, 2 * np.pi)
    cam_velocity = pan / steps * np.array([np.sin(pan_dir), np.cos(pan_dir)])
    cam_mid = rng.uniform(pan / 2, 2 * margin - pan / 2, size=2)

    drift_dir = rng.uniform(0, 2 * np.pi)
    drift = rng.uniform(0, spec.nuisance_drift_frac * S) / steps
    velocity = drift * np.array([np.cos(drift_dir), np.sin(drift_dir)])
    spin = np.deg2rad(_plus_minus(rng, spec.nuisance_turn_deg)) / steps
    growth = _plus_minus(rng, np.log(spec.nuisance_scale_factor)) / steps
    name = ACTION_CLASSES[label]
    if name in _DIRECTIONS:
        velocity = velocity + np.array(_DIRECTIONS[name]) * rng.uniform(*spec.travel_frac) * S / steps
    elif name in ("rotate_cw", "rotate_ccw"):
        spin = (1 if name == "rotate_cw" else -1) * np.deg2rad(rng.uniform(*spec.turn_deg)) / steps
    else:
        growth = (1 if name == "grow" else -1) * np.log(rng.uniform(*spec.scale_factor)) / steps

    # One admissible range for the middle-frame centre, shared by all classes (a class-dependent range would
    # leak the class into the middle frame): the largest object on the longest path stays in view.
    largest = spec.radius_frac[1] * S * np.sqrt(spec.scale_factor[1] * spec.nuisance_scale_factor)
    reach = (1 - spec.edge_slack) * largest + (spec.travel_frac[1] + spec.nuisance_drift_frac) * S / 2
    hue, saturation, value = rng.uniform(0, 1), rng.uniform(0.6, 1.0), rng.uniform(0.75, 1.0)
    return _Scene(
        background=background,
        cam_mid=cam_mid,
        cam_velocity=cam_velocity,
        shape=int(rng.integers(len(SHAPES))),
        texture=_TEXTURES[int(rng.integers(len(_TEXTURES)))],
        colour=np.array(colorsys.hsv_to_rgb(hue, saturation, value)),
        mid=rng.uniform(reach, S - reach, size=2),
        velocity=velocity,
        radius=float(np.exp(rng.uniform(*np.log(spec.radius_frac))) * S),
        growth=float(growth),
        angle=float(rng.uniform(0, 2 * np.pi)),
        spin=float(spin),
    )


def _stamp(scene: _Scene, t: float, spec: ActionSpec) -> Stamp:
    dt = t - (spec.num_frames - 1) / 2
    cx, cy = scene.mid + scene.velocity * dt
    radius = scene.radius * np.exp(scene.growth * dt)
    marker = 1.0 - scene.colour if spec.orientation_marker else None
    return rasterise(scene.shape, scene.texture, scene.colour, cx, cy, radius, scene.angle + scene.spin * dt, marker)


class SyntheticAction(SyntheticClips):
    """Deterministic synthetic action clips (see module docstring); a map-style dataset of ``Clip``.

    ``dataset[i]`` is a ``Clip`` with ``frames`` float32 ``[num_frames, 3, size, size]`` in [0, 1] and ``label``
    (an index into ``class_names``). ``num_clips`` defaults to ``DEFAULT_NUM_CLIPS[split]``. ``generator_spec``
    sets the remaining generator settings; ``size`` and ``num_frames`` always override its own.
    """

    class_names = ACTION_CLASSES
    default_num_clips = DEFAULT_NUM_CLIPS
    spec_type = ActionSpec

    def __init__(
        self,
        split: str = "val",
        num_clips: int | None = None,
        num_frames: int = 16,
        size: int = 160,
        seed: int = 0,
        generator_spec: ActionSpec | None = None,
    ) -> None:
        super().__init__(split, num_clips, num_frames, size, seed, generator_spec)
        self._last_scene: tuple[int, _Scene] | None = None

    def label(self, index: int) -> int:
        """The class of clip ``index``, without drawing it."""
        self._check_index(index)
        K = len(self.class_names)
        order = make_rng(self.seed, self._split_id, _STREAM_LABELS, index // K).permutation(K)
        return int(order[index % K])

    def _scene(self, index: int) -> _Scene:
        # training reads a clip, its motion and its masks in a row: draw its scene (mostly the background) once
        if self._last_scene is None or self._last_scene[0] != index:
            rng = make_rng(self.seed, self._split_id, _STREAM_CLIPS, index, 0)
            self._last_scene = (index, _sample_scene(rng, self.label(index), self.generator_spec))
        return self._last_scene[1]

    def _frame(self, scene: _Scene, index: int, t: int) -> np.ndarray:
        spec = self.generator_spec
        top, left = scene.cam_mid + scene.cam_velocity * (t - (spec.num_frames - 1) / 2)
        frame = crop(scene.background, top, left, spec.size)
        paste(frame, _stamp(scene, t, spec))
        noise_rng = make_rng(self.seed, self._split_id, _STREAM_CLIPS, index, t + 1)
        return add_sensor_noise(frame, noise_rng, spec.noise_std)

    def __getitem__(self, index: int) -> Clip:
        scene = self._scene(index)
        frames = [self._frame(scene, index, t) for t in range(self.num_frames)]
        return Clip(
            frames=frames_to_tensor(frames),
            clip_id=f"synthetic-action/{self.split}/seed{self.seed}/{index:05d}",
            label=self.label(index),
        )

    def frames_at(self, index: int, times: list[int]) -> torch.Tensor:
        """Frames ``times`` of clip ``index`` only (identical to ``self[index].frames[times]``), ``[len, 3, H, W]``."""
        scene = self._scene(index)
        return frames_to_tensor([self._frame(scene, index, t) for t in times])

    def motion(self, index: int) -> dict[str, np.ndarray | float]:
        """The object's state per frame and its motion rates, in frame coordinates (training targets).

        ``centre`` ``[T, 2]`` (x, y) px, ``radius`` ``[T]`` px, ``angle`` ``[T]`` rad (clockwise); per frame:
        ``velocity`` ``[2]`` px, ``growth`` d log(radius), ``spin`` rad.
        """
        scene, T = self._scene(index), self.num_frames
        dt = np.arange(T) - (T - 1) / 2
        return {
            "centre": scene.mid + scene.velocity * dt[:, None],
            "radius": scene.radius * np.exp(scene.growth * dt),
            "angle": scene.angle + scene.spin * dt,
            "velocity": scene.velocity,
            "growth": scene.growth,
            "spin": scene.spin,
        }

    def object_masks(self, index: int) -> np.ndarray:
        """The object's pixels in every frame of clip ``index``, bool ``[T, H, W]`` (no background drawn)."""
        scene, spec = self._scene(index), self.generator_spec
        masks = np.zeros((spec.num_frames, spec.size, spec.size), dtype=bool)
        for t in range(spec.num_frames):
            stamp = _stamp(scene, t, spec)
            regions = stamp.overlap(spec.size, spec.size)
            if regions is not None:
                masks[t][regions[0]] = stamp.mask[regions[1]]
        return masks

    def spec(self) -> dict:
        """The data specification, for model cards and run provenance."""
        return {
            "name": "synthaction",
            "task": "action",
            "spec_version": SPEC_VERSION,
            "split": self.split,
            "seed": self.seed,
            "num_clips": self.num_clips,
            "class_names": list(self.class_names),
            "frames": "float32 [T, 3, H, W] RGB in [0, 1]",
            "label": "int, index into class_names; balanced in blocks of len(class_names) clips",
            "seeding": "numpy SeedSequence([salt, seed, split_id, stream, clip_index, frame_or_0])",
            **asdict(self.generator_spec),
        }


def action_labels(dataset: SyntheticAction) -> torch.Tensor:
    """All labels of ``dataset``, int64 ``[num_clips]``, without drawing any frame."""
    return torch.tensor([dataset.label(i) for i in range(len(dataset))], dtype=torch.int64)
