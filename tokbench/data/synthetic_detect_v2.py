"""Synthetic VID v2 (``synthvid``): detection scenes calibrated to ImageNet VID val.

Per object a latent ``u ~ U(0, 1)`` sets how lively it is: its speed relative to its own size, its spin and how
much it breathes in scale grow with ``u``, while its size shrinks with ``u`` (in VID slow objects are big, fast
ones small). Objects move on straight lines with a sideways sway and pass through the view at a random time, so
they enter and leave the frame. Most clips hold one object. A hand-held camera pans, shakes and zooms slowly
(boxes are in image coordinates, so it changes motion IoU too); the lighting drifts; sensor noise varies per clip.

Everything is closed-form in time ``t``, so any frame is drawn on its own. ``DetectionSpecV2``'s defaults are the
calibrated values (``tokbench.data.motion.check_calibration`` compares a split with VID val).
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from functools import cache

import numpy as np

from tokbench.data.synthetic import (
    DETECTION_PALETTE,
    DETECTION_TEXTURES,
    SHAPES,
    TEXTURES,
    Stamp,
    add_sensor_noise,
    paste,
    random_colour,
    rasterise,
    reflect,
    textured_background,
)


@dataclass(frozen=True)
class DetectionSpecV2:
    """Generator settings. Sizes are fractions of the frame side or area, speeds fractions per frame."""

    size: int = 320
    num_frames: int = 32
    object_count_weights: tuple[float, ...] = (0.70, 0.12, 0.07, 0.05, 0.03, 0.03)  # P(1 object), P(2), ...
    box_area_frac_slow: float = 0.3  # median box area / frame area of the slowest objects (u = 0) ...
    box_area_frac_fast: float = 0.022  # ... and of the fastest (u = 1), log-linear in between
    box_area_log_std: float = 1.2  # natural-log spread of the box area around that median
    box_area_frac_range: tuple[float, float] = (0.003, 0.6)
    rel_speed: tuple[float, float] = (0.0009, 0.13)  # centre speed / box side per frame at u = 0 and 1, log-linear
    sway_frac: float = 0.3  # amplitude of a sideways sinusoid, times the distance travelled in one sway period
    spin_deg_per_frame: float = 1.5  # at u = 1, scaled by u^2
    scale_swing: float = 0.15  # log radius swings by at most this at u = 1, scaled by u
    pass_frames: int = 32  # every object is in view (centre inside the frame) at some t in [0, pass_frames)
    pan_frac_per_frame: float = 0.003  # largest camera pan speed, of the frame side
    pan_range_frac: float = 0.08  # the pan bounces within +-this of the frame side
    shake_frac: float = 0.004  # amplitude of each of the three shake sinusoids, of the frame side
    zoom_swing: float = 0.08  # zoom = exp(swing * sin(2 pi t / period + phase)), swing uniform in +-this
    zoom_period_frames: tuple[float, float] = (120.0, 400.0)
    light_swing: float = 0.1  # brightness gain swings within 1 +- this (per-channel tint drift a third of it)
    light_period_frames: tuple[float, float] = (40.0, 160.0)
    noise_std: tuple[float, float] = (0.005, 0.03)  # per clip, uniform
    min_box_side_px: float = 6.0  # smaller visible boxes are dropped from the targets
    min_visible_frac: float = 0.2  # objects with less of their area in view and unoccluded are dropped


@cache
def _box_area_per_r2(shape: int) -> float:
    """Box area / radius^2 of ``SHAPES[shape]`` at angle 0 (4 for a disc)."""
    stamp = rasterise(shape, TEXTURES.index("flat"), np.ones(3), 0.0, 0.0, 64.0, 0.0)
    rows, cols = np.flatnonzero(stamp.mask.any(axis=1)), np.flatnonzero(stamp.mask.any(axis=0))
    return float((rows[-1] - rows[0] + 1) * (cols[-1] - cols[0] + 1)) / 64.0**2


@dataclass(frozen=True)
class SceneV2:
    """Everything random about one clip; per-object arrays have length M, in drawing (back-to-front) order.

    World coordinates are frame pixels of the camera at rest (no pan, shake or zoom).
    """

    background: np.ndarray  # [3, C, C], canvas pixel (i, j) is world (i - margin, j - margin)
    margin: float
    pan_start: np.ndarray  # [2] (x, y) world offset of the camera at t = 0
    pan_velocity: np.ndarray  # [2] px/frame
    pan_range: float  # the pan bounces in [-pan_range, pan_range]
    shake_amp: np.ndarray  # [3, 2] px
    shake_freq: np.ndarray  # [3] rad/frame
    shake_phase: np.ndarray  # [3, 2]
    zoom_swing: float
    zoom_freq: float  # rad/frame
    zoom_phase: float
    light_amp: np.ndarray  # [3] per-channel gain amplitude
    light_freq: float
    light_phase: np.ndarray  # [3]
    noise_std: float
    labels: np.ndarray  # [M] class ids
    colours: np.ndarray  # [M, 3]
    anchor: np.ndarray  # [M, 2] world centre (x, y) at t = 0, before the sway
    velocity: np.ndarray  # [M, 2] world px/frame
    sway: np.ndarray  # [M] px
    sway_freq: np.ndarray  # [M] rad/frame
    sway_phase: np.ndarray  # [M]
    radius: np.ndarray  # [M] world px
    swing: np.ndarray  # [M] log-radius amplitude
    swing_freq: np.ndarray  # [M] rad/frame
    swing_phase: np.ndarray  # [M]
    angle: np.ndarray  # [M] rad at t = 0
    spin: np.ndarray  # [M] rad/frame


def _camera(scene: SceneV2, t: float) -> tuple[np.ndarray, float]:
    """World offset ``[2]`` (x, y) and zoom of the camera at time ``t``."""
    pan = reflect(scene.pan_start + scene.pan_velocity * t, -scene.pan_range, scene.pan_range)
    shake = (scene.shake_amp * np.sin(scene.shake_freq[:, None] * t + scene.shake_phase)).sum(axis=0)
    zoom = float(np.exp(scene.zoom_swing * np.sin(scene.zoom_freq * t + scene.zoom_phase)))
    return pan + shake, zoom


def strata(rng: np.random.Generator, index: int) -> np.ndarray:
    """Quantiles ``[3]`` in [0, 1) for ``sample_scene`` of clip ``index``: a Kronecker sequence with a random
    start from ``rng``, so that every run of consecutive clips covers object count, liveliness and size evenly
    (independent draws leave a 24-clip subset several points off the split's speed mix)."""
    return np.mod(rng.uniform(0, 1, size=3) + index * _KRONECKER, 1.0)


_GOLDEN = (np.sqrt(5.0) - 1) / 2
_KRONECKER = np.array([np.sqrt(2.0), np.sqrt(3.0), np.sqrt(5.0)]) % 1.0  # rationally independent steps


def sample_scene(rng: np.random.Generator, spec: DetectionSpecV2, quantiles: np.ndarray | None = None) -> SceneV2:
    """Draw one clip's scene from ``rng``.

    ``quantiles`` (``[3]`` in [0, 1), see ``strata``) fix the object count, and the liveliness ``u`` and the
    size of the first object; None draws them from ``rng``.
    """
    q = rng.uniform(0, 1, size=3) if quantiles is None else np.asarray(quantiles, dtype=np.float64)
    S = spec.size
    margin = np.ceil(S * (0.5 * np.exp(spec.zoom_swing) - 0.5 + spec.pan_range_frac + 3 * spec.shake_frac)) + 2
    background = textured_background(rng, S + 2 * int(margin))
    pan_dir = rng.uniform(0, 2 * np.pi)
    pan_velocity = rng.uniform(0, spec.pan_frac_per_frame) * S * np.array([np.cos(pan_dir), np.sin(pan_dir)])
    pan_range = spec.pan_range_frac * S
    weights = np.asarray(spec.object_count_weights, dtype=np.float64)
    M = int(np.searchsorted(np.cumsum(weights / weights.sum()), q[0], side="right")) + 1
    M = min(M, len(weights))
    labels = rng.integers(0, len(SHAPES), size=M)

    # later objects continue the first one's quantiles along a golden-ratio sequence: a clip's objects differ
    step = np.arange(M) * _GOLDEN
    u = np.mod(q[1] + step, 1.0)
    size_q = np.clip(np.mod(q[2] + step * _GOLDEN, 1.0), 1e-6, 1 - 1e-6)
    log_area = np.log(spec.box_area_frac_slow) + u * np.log(spec.box_area_frac_fast / spec.box_area_frac_slow)
    # log-logistic spread with the standard deviation box_area_log_std (in natural log)
    spread = spec.box_area_log_std * np.sqrt(3) / np.pi * np.log(size_q / (1 - size_q))
    area = np.clip(np.exp(log_area + spread), *spec.box_area_frac_range)
    radius = S * np.sqrt(area / np.array([_box_area_per_r2(int(c)) for c in labels]))
    side = S * np.sqrt(area)
    speed = side * np.exp(np.log(spec.rel_speed[0]) + u * np.log(spec.rel_speed[1] / spec.rel_speed[0]))
    heading = rng.uniform(0, 2 * np.pi, size=M)
    velocity = speed[:, None] * np.stack([np.cos(heading), np.sin(heading)], axis=1)
    sway_period = rng.uniform(16, 64, size=M)
    # Each object's centre is at a random point of the frame (radius-inset for big ones) at a random pass time.
    inset = np.minimum(0.6 * radius, 0.5 * S)[:, None]
    passing = inset + rng.uniform(0, 1, size=(M, 2)) * (S - 2 * inset)
    pass_time = rng.uniform(0, spec.pass_frames, size=M)

    scene = SceneV2(
        background=background,
        margin=float(margin),
        pan_start=rng.uniform(-pan_range, pan_range, size=2),
        pan_velocity=pan_velocity,
        pan_range=pan_range,
        shake_amp=rng.uniform(0, spec.shake_frac * S, size=(3, 2)),
        shake_freq=2 * np.pi / rng.uniform(3, 12, size=3),
        shake_phase=rng.uniform(0, 2 * np.pi, size=(3, 2)),
        zoom_swing=float(rng.uniform(-spec.zoom_swing, spec.zoom_swing)),
        zoom_freq=float(2 * np.pi / rng.uniform(*spec.zoom_period_frames)),
        zoom_phase=float(rng.uniform(0, 2 * np.pi)),
        light_amp=rng.uniform(-spec.light_swing, spec.light_swing) + rng.uniform(-1, 1, size=3) * spec.light_swing / 3,
        light_freq=float(2 * np.pi / rng.uniform(*spec.light_period_frames)),
        light_phase=rng.uniform(0, 2 * np.pi) + rng.uniform(-0.5, 0.5, size=3),
        noise_std=float(rng.uniform(*spec.noise_std)),
        labels=labels,
        colours=np.stack([random_colour(rng, DETECTION_PALETTE[c], jitter=0.08) for c in labels]),
        anchor=np.zeros((M, 2)),  # set below
        velocity=velocity,
        sway=spec.sway_frac * speed * sway_period / (2 * np.pi) * rng.uniform(0, 1, size=M),
        sway_freq=2 * np.pi / sway_period,
        sway_phase=rng.uniform(0, 2 * np.pi, size=M),
        radius=radius,
        swing=spec.scale_swing * u * rng.uniform(0, 1, size=M),
        swing_freq=2 * np.pi / rng.uniform(32, 128, size=M),
        swing_phase=rng.uniform(0, 2 * np.pi, size=M),
        angle=rng.uniform(0, 2 * np.pi, size=M),
        spin=np.deg2rad(spec.spin_deg_per_frame * u**2 * rng.uniform(-1, 1, size=M)),
    )
    # The anchors that put each object's image centre at ``passing`` at its pass time.
    anchor = np.zeros((M, 2))
    for k in range(M):
        offset, zoom = _camera(scene, pass_time[k])
        anchor[k] = (passing[k] - S / 2) / zoom + S / 2 + offset - _path(scene, pass_time[k])[k]
    return replace(scene, anchor=anchor)


def _path(scene: SceneV2, t: float) -> np.ndarray:
    """World centre offsets ``[M, 2]`` from the anchors at time ``t``: straight motion plus a sideways sway."""
    speed = np.linalg.norm(scene.velocity, axis=1, keepdims=True)
    sideways = np.stack([-scene.velocity[:, 1], scene.velocity[:, 0]], axis=1) / np.maximum(speed, 1e-9)
    sway = scene.sway * (np.sin(scene.sway_freq * t + scene.sway_phase) - np.sin(scene.sway_phase))
    return scene.velocity * t + sway[:, None] * sideways


def object_stamps(scene: SceneV2, t: float, size: int) -> list[Stamp]:
    """All objects of ``scene`` rasterised in image coordinates of an ``size``-px frame at time ``t``."""
    offset, zoom = _camera(scene, t)
    centre = (scene.anchor + _path(scene, t) - offset - size / 2) * zoom + size / 2  # [M, 2]
    radius = scene.radius * np.exp(scene.swing * np.sin(scene.swing_freq * t + scene.swing_phase)) * zoom
    angle = scene.angle + scene.spin * t
    return [
        rasterise(int(c), DETECTION_TEXTURES[c], scene.colours[k], centre[k, 0], centre[k, 1], radius[k], angle[k])
        for k, c in enumerate(scene.labels)
    ]


def _sample_axis(canvas: np.ndarray, coords: np.ndarray, axis: int) -> np.ndarray:
    """Linear interpolation of ``canvas`` (``[3, A, B]``) at fractional indices ``coords`` along ``axis`` (1, 2)."""
    n = canvas.shape[axis]
    coords = np.clip(coords, 0, n - 1.001)
    i0 = coords.astype(np.int64)
    w = (coords - i0).astype(np.float32)
    shape = (1, -1, 1) if axis == 1 else (1, 1, -1)
    lo, hi = np.take(canvas, i0, axis=axis), np.take(canvas, i0 + 1, axis=axis)
    return lo + (hi - lo) * w.reshape(shape)


def render(scene: SceneV2, stamps: list[Stamp], t: float, size: int, noise_rng: np.random.Generator) -> np.ndarray:
    """Frame ``t`` of ``scene`` with its objects ``stamps``, float32 ``[3, size, size]`` in [0, 1]."""
    offset, zoom = _camera(scene, t)
    pixel = (np.arange(size) + 0.5 - size / 2) / zoom + size / 2 - 0.5 + scene.margin  # canvas index, before pan
    frame = _sample_axis(_sample_axis(scene.background, pixel + offset[1], 1), pixel + offset[0], 2)
    for stamp in stamps:
        paste(frame, stamp)
    gain = 1 + scene.light_amp * np.sin(scene.light_freq * t + scene.light_phase)
    frame *= gain.astype(np.float32)[:, None, None]
    return add_sensor_noise(frame, noise_rng, scene.noise_std)
