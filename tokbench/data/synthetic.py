"""Shared pieces of the synthetic video benchmark: seeding, textured backgrounds, shapes and the ``Clip`` record.

Everything here is pure numpy on explicit ``np.random.Generator`` objects (no global RNG state), so a clip is a
function of ``(seed, split, index)`` only. Images are drawn channel-first, ``[3, H, W]`` float32 in [0, 1], and
become torch tensors only at the dataset boundary (``frames_to_tensor``).

Shapes are implicit functions on object-local coordinates ``(u, v)`` scaled so that every shape fits inside the
unit circle; objects are drawn on a small pixel grid around their centre, never on the whole frame.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, replace

import numpy as np
import torch

from tokbench.errors import ConfigError, unknown_name

SPLITS = ("train", "val", "test")
# Keeps tokbench's seed streams apart from anyone else seeding numpy with small integers.
_SALT = 0x70C_BE4C

SHAPES = ("disc", "square", "triangle", "ring", "cross", "star")
TEXTURES = ("radial", "checker", "stripes", "flat", "rings", "dots")

# Per detection class (SHAPES order): base RGB colour and texture, so classes differ in appearance as well as in shape.
DETECTION_PALETTE = np.array(
    [
        [0.90, 0.30, 0.15],  # disc: red-orange
        [0.20, 0.35, 0.90],  # square: blue
        [0.20, 0.78, 0.25],  # triangle: green
        [0.95, 0.85, 0.20],  # ring: yellow
        [0.80, 0.20, 0.80],  # cross: magenta
        [0.20, 0.85, 0.90],  # star: cyan
    ]
)
DETECTION_TEXTURES = tuple(TEXTURES.index(t) for t in ("radial", "checker", "stripes", "flat", "rings", "dots"))


@dataclass(frozen=True)
class Clip:
    """One clip: the frames processed with one state (generated here, or read by the real-video datasets).

    ``frames`` is float32 ``[T, 3, H, W]`` in [0, 1] (RGB): a tensor, or a ``LazyFrames`` that makes frames on
    access (same ``frames[i]``, ``frames[a:b]`` and ``frames.shape``). Detection clips carry ``targets`` (length T,
    one ``{"boxes": float32 [M, 4] xyxy pixels, "labels": int64 [M]}`` per frame, the per-image target format of
    torchmetrics' ``MeanAveragePrecision``) and ``track_ids`` (length T, int64 ``[M]``, the object instance of each
    box, stable over the clip). Action clips carry ``label``.

    ``valid_hw = (h, w)``: only the top-left ``h x w`` of every frame is picture, the rest is padding that must be
    exactly 0 in the network input (``LoadedModel.steps(frames, valid_hw)``); None: the whole frame is picture.
    ``video_id``: the video this clip is one view of (multi-view testing); the views of a video are consecutive
    clips and their logits are averaged into one prediction. None: the clip is a video of its own.
    """

    frames: torch.Tensor
    clip_id: str
    targets: list[dict[str, torch.Tensor]] | None = None
    track_ids: list[torch.Tensor] | None = None
    label: int | None = None
    valid_hw: tuple[int, int] | None = None
    video_id: str | None = None


def split_id(split: str) -> int:
    """The integer that keeps the seed stream of ``split`` disjoint from the other splits."""
    if split not in SPLITS:
        raise unknown_name("split", split, SPLITS)
    return SPLITS.index(split)


def make_rng(*keys: int) -> np.random.Generator:
    """A generator seeded by hashing ``keys`` (non-negative ints) with ``np.random.SeedSequence``."""
    if any(k < 0 for k in keys):
        raise ConfigError(f"seed keys must be non-negative, got {keys}")
    return np.random.default_rng(np.random.SeedSequence([_SALT, *keys]))


def check_dims(size: int, num_frames: int, num_clips: int, min_size: int = 64) -> None:
    """Raise ``ConfigError`` for a frame size, clip length or clip count the generators cannot honour."""
    if size < min_size:
        raise ConfigError(f"frame size must be at least {min_size} px, got {size}")
    if num_frames < 1:
        raise ConfigError(f"num_frames must be positive, got {num_frames}")
    if num_clips < 0:
        raise ConfigError(f"the number of clips must be non-negative, got {num_clips}")


def reflect(x: np.ndarray | float, lo: np.ndarray | float, hi: np.ndarray | float) -> np.ndarray:
    """Fold ``x`` into ``[lo, hi]`` (``hi > lo``, broadcast) like a point bouncing between two walls.

    A triangle wave: closed form in time, so any frame of a bouncing trajectory is computed directly.
    """
    span = np.asarray(hi, dtype=np.float64) - lo
    phase = np.mod(np.asarray(x, dtype=np.float64) - lo, 2 * span)
    return lo + np.where(phase < span, phase, 2 * span - phase)


def _upsample_bilinear(grid: np.ndarray, out_h: int, out_w: int) -> np.ndarray:
    """Bilinear resize of a ``[h, w]`` grid to ``[out_h, out_w]`` (corners aligned)."""
    h, w = grid.shape
    ys = np.linspace(0, h - 1, out_h)
    xs = np.linspace(0, w - 1, out_w)
    y0 = np.minimum(ys.astype(np.int64), h - 2)
    x0 = np.minimum(xs.astype(np.int64), w - 2)
    wy = (ys - y0)[:, None]
    wx = (xs - x0)[None, :]
    top = grid[y0][:, x0] * (1 - wx) + grid[y0][:, x0 + 1] * wx
    bottom = grid[y0 + 1][:, x0] * (1 - wx) + grid[y0 + 1][:, x0 + 1] * wx
    return top * (1 - wy) + bottom * wy


def _sinusoid_field(rng: np.random.Generator, canvas: int, num_waves: int, max_cycles: float) -> np.ndarray:
    """Sum of ``num_waves`` random plane waves of at most ``max_cycles`` cycles per canvas, ``[canvas, canvas]``.

    Uses cos(a + b) = cos a cos b - sin a sin b, so each wave costs one outer product instead of a full-grid cos.
    """
    coords = np.arange(canvas, dtype=np.float64) / canvas
    field = np.zeros((canvas, canvas))
    for _ in range(num_waves):
        cycles = rng.uniform(0.5, max_cycles)
        angle = rng.uniform(0, 2 * np.pi)
        a = 2 * np.pi * cycles * np.cos(angle) * coords + rng.uniform(0, 2 * np.pi)  # along x
        b = 2 * np.pi * cycles * np.sin(angle) * coords  # along y
        field += rng.uniform(0.3, 1.0) * (np.outer(np.cos(b), np.cos(a)) - np.outer(np.sin(b), np.sin(a)))
    return field / np.abs(field).max()


def textured_background(rng: np.random.Generator, canvas: int) -> np.ndarray:
    """A coloured procedural texture, float32 ``[3, canvas, canvas]`` in [0, 1].

    Low-frequency plane waves give the large structure, bilinear value noise at three octaves (down to ~6 px
    cells) the fine detail that gives every patch token some texture, and a few translucent ellipses the hard
    edges of background clutter. Colours are muted so that objects stand out.
    """
    fields = [
        _sinusoid_field(rng, canvas, num_waves=4, max_cycles=3.0),
        _sinusoid_field(rng, canvas, num_waves=4, max_cycles=8.0),
    ]
    for cells in (6, 20, max(4, canvas // 6)):
        noise = _upsample_bilinear(rng.uniform(-1, 1, (cells + 1, cells + 1)), canvas, canvas)
        fields.append(noise / np.abs(noise).max())
    base = rng.uniform(0.3, 0.6) + rng.uniform(-0.08, 0.08, size=3)  # a greyish tint
    mix = rng.uniform(-0.15, 0.15, size=(3, len(fields)))  # each field tints the channels differently
    image = base[:, None, None] + np.tensordot(mix, np.stack(fields), axes=1)
    for _ in range(int(rng.integers(6, 15))):
        _blend_ellipse(image, rng, canvas, colour=base + rng.uniform(-0.2, 0.2, size=3))
    return np.clip(image, 0.0, 1.0).astype(np.float32)


def _blend_ellipse(image: np.ndarray, rng: np.random.Generator, canvas: int, colour: np.ndarray) -> None:
    """Blend one random translucent ellipse of ``colour`` (``[3]``) into ``image`` (``[3, canvas, canvas]``)."""
    cx, cy = rng.uniform(0, canvas, size=2)
    a, b = rng.uniform(0.04, 0.2, size=2) * canvas
    angle, alpha = rng.uniform(0, np.pi), rng.uniform(0.3, 0.7)
    reach = max(a, b)
    x0, x1 = max(int(cx - reach), 0), min(int(cx + reach) + 1, canvas)
    y0, y1 = max(int(cy - reach), 0), min(int(cy + reach) + 1, canvas)
    if x0 >= x1 or y0 >= y1:
        return
    dx, dy = np.arange(x0, x1)[None, :] + 0.5 - cx, np.arange(y0, y1)[:, None] + 0.5 - cy
    c, s = np.cos(angle), np.sin(angle)
    inside = ((c * dx + s * dy) / a) ** 2 + ((-s * dx + c * dy) / b) ** 2 <= 1.0
    window = image[:, y0:y1, x0:x1]
    window[:, inside] = (1 - alpha) * window[:, inside] + alpha * colour[:, None]


def shape_mask(shape: int, u: np.ndarray, v: np.ndarray) -> np.ndarray:
    """Inside-test of shape ``SHAPES[shape]`` at object-local, rotated coordinates (unit = object radius)."""
    rho = np.hypot(u, v)
    if SHAPES[shape] == "disc":
        return rho <= 1.0
    if SHAPES[shape] == "square":
        return np.maximum(np.abs(u), np.abs(v)) <= 0.7
    if SHAPES[shape] == "triangle":  # equilateral, inscribed in the unit circle, apex at -v
        return (v <= 0.5) & (np.sqrt(3.0) * u - v <= 1.0) & (-np.sqrt(3.0) * u - v <= 1.0)
    if SHAPES[shape] == "ring":
        return (rho <= 1.0) & (rho >= 0.55)
    if SHAPES[shape] == "cross":
        au, av = np.abs(u), np.abs(v)
        return ((au <= 0.3) & (av <= 0.95)) | ((av <= 0.3) & (au <= 0.95))
    if SHAPES[shape] == "star":  # five points: the radius swings between 0.45 and 1 with the polar angle
        phi = np.arctan2(v, u)
        tooth = np.abs(np.mod(phi * 5 / (2 * np.pi), 1.0) - 0.5) * 2  # 1 at a point, 0 between points
        return rho <= 0.45 + 0.55 * tooth
    raise ValueError(f"unknown shape id {shape}")


def texture_shade(texture: int, u: np.ndarray, v: np.ndarray) -> np.ndarray:
    """Brightness multiplier in about [0.5, 1] for texture ``TEXTURES[texture]`` at object-local coordinates."""
    name = TEXTURES[texture]
    if name == "radial":
        return 1.0 - 0.45 * np.minimum(u * u + v * v, 1.0)
    if name == "checker":
        return 0.55 + 0.45 * (np.mod(np.floor(u * 2.5) + np.floor(v * 2.5), 2))
    if name == "stripes":
        return 0.55 + 0.45 * (np.sin(9.0 * v) > 0)
    if name == "flat":
        return np.full_like(u, 0.95)
    if name == "rings":
        return 0.6 + 0.4 * (np.sin(14.0 * np.hypot(u, v)) > 0)
    if name == "dots":
        return 1.0 - 0.45 * ((np.sin(8.0 * u) * np.sin(8.0 * v)) > 0.35)
    raise ValueError(f"unknown texture id {texture}")


@dataclass(frozen=True)
class Stamp:
    """One object rasterised at one time: its mask and colours on the pixel window ``[y0:y1, x0:x1]``.

    ``mask`` is bool ``[y1 - y0, x1 - x0]`` and ``rgb`` float32 ``[3, y1 - y0, x1 - x0]``; the window is in frame
    pixel coordinates and may extend beyond the frame (``clip_window`` cuts it).
    """

    y0: int
    x0: int
    mask: np.ndarray
    rgb: np.ndarray

    @property
    def y1(self) -> int:
        return self.y0 + self.mask.shape[0]

    @property
    def x1(self) -> int:
        return self.x0 + self.mask.shape[1]

    def overlap(self, H: int, W: int) -> tuple[tuple[slice, slice], tuple[slice, slice]] | None:
        """Where the stamp meets an ``H x W`` frame: ``(frame rows/cols, stamp rows/cols)``, None if nowhere."""
        fy0, fy1, fx0, fx1 = max(self.y0, 0), min(self.y1, H), max(self.x0, 0), min(self.x1, W)
        if fy0 >= fy1 or fx0 >= fx1:
            return None
        frame_region = (slice(fy0, fy1), slice(fx0, fx1))
        stamp_region = (slice(fy0 - self.y0, fy1 - self.y0), slice(fx0 - self.x0, fx1 - self.x0))
        return frame_region, stamp_region


def rasterise(
    shape: int, texture: int, colour: np.ndarray, cx: float, cy: float, radius: float, angle: float,
    marker: np.ndarray | None = None,
) -> Stamp:
    """Draw one object centred at ``(cx, cy)`` px, radius ``radius`` px, rotated by ``angle`` rad.

    A positive angle turns the object clockwise on screen (image y points down). ``colour`` is ``[3]`` RGB.
    ``marker`` (``[3]`` RGB) paints a hand from near the centre towards screen direction ``(cos angle, sin
    angle)``, so that the object's orientation is defined whatever the symmetry of its shape and texture.
    """
    reach = radius * 1.05 + 1
    x0, x1 = int(np.floor(cx - reach)), int(np.ceil(cx + reach))
    y0, y1 = int(np.floor(cy - reach)), int(np.ceil(cy + reach))
    dx = (np.arange(x0, x1) + 0.5 - cx) / radius
    dy = (np.arange(y0, y1) + 0.5 - cy) / radius
    c, s = np.cos(angle), np.sin(angle)
    u = c * dx[None, :] + s * dy[:, None]  # rotate the sampling grid by -angle = rotate the object by +angle
    v = -s * dx[None, :] + c * dy[:, None]
    mask = shape_mask(shape, u, v)
    rgb = (colour[:, None, None] * texture_shade(texture, u, v)[None]).astype(np.float32)
    if marker is not None:
        hand = mask & (u >= 0.2) & (u <= 0.95) & (np.abs(v) <= 0.22)
        rgb[:, hand] = marker[:, None]
    return Stamp(y0=y0, x0=x0, mask=mask, rgb=rgb)


def paste(frame: np.ndarray, stamp: Stamp) -> None:
    """Paint ``stamp`` onto ``frame`` (``[3, H, W]``) in place; the parts outside the frame are dropped."""
    regions = stamp.overlap(*frame.shape[1:])
    if regions is None:
        return
    (ys, xs), local = regions
    mask = stamp.mask[local]
    window = frame[:, ys, xs]
    window[:, mask] = stamp.rgb[:, local[0], local[1]][:, mask]


def random_colour(rng: np.random.Generator, palette: np.ndarray, jitter: float) -> np.ndarray:
    """``palette`` (``[3]`` RGB) with a small random jitter, kept in [0.05, 1]."""
    return np.clip(palette + rng.uniform(-jitter, jitter, size=3), 0.05, 1.0)


def crop(canvas: np.ndarray, top: float, left: float, size: int) -> np.ndarray:
    """A ``[3, size, size]`` copy of ``canvas`` (``[3, C, C]``) at integer-rounded offset ``(top, left)``."""
    y, x = int(round(top)), int(round(left))
    return canvas[:, y : y + size, x : x + size].copy()


def add_sensor_noise(frame: np.ndarray, rng: np.random.Generator, std: float) -> np.ndarray:
    """``frame`` plus Gaussian noise of ``std``, clipped to [0, 1] (in place; also returned)."""
    if std > 0:
        frame += std * rng.standard_normal(frame.shape, dtype=np.float32)
    return np.clip(frame, 0.0, 1.0, out=frame)


def frames_to_tensor(frames: list[np.ndarray]) -> torch.Tensor:
    """Stack ``T`` frames of ``[3, H, W]`` into a float32 tensor ``[T, 3, H, W]``."""
    return torch.from_numpy(np.stack(frames).astype(np.float32, copy=False))


class SyntheticClips:
    """What the seeded generators share: split, seed, clip count and generator settings, indexing, iteration.

    Subclasses set ``class_names``, ``default_num_clips`` (per split) and ``spec_type`` (their generator settings
    dataclass, with ``size`` and ``num_frames`` fields) and implement ``__getitem__``.
    """

    class_names: tuple[str, ...] = ()
    default_num_clips: dict[str, int] = {}
    spec_type: type = object

    def __init__(self, split: str, num_clips: int | None, num_frames: int, size: int, seed: int,
                 generator_spec=None) -> None:
        self.split = split
        self._split_id = split_id(split)
        self.seed = seed
        self.num_clips = self.default_num_clips[split] if num_clips is None else num_clips
        self.generator_spec = replace(generator_spec or self.spec_type(), size=size, num_frames=num_frames)
        check_dims(size, num_frames, self.num_clips)

    @property
    def num_frames(self) -> int:
        return self.generator_spec.num_frames

    @property
    def size(self) -> int:
        return self.generator_spec.size

    def __len__(self) -> int:
        return self.num_clips

    def _check_index(self, index: int) -> None:
        if not 0 <= index < self.num_clips:
            raise IndexError(f"clip index {index} out of range for {self.num_clips} clips")

    def __getitem__(self, index: int) -> Clip:
        raise NotImplementedError

    def __iter__(self) -> Iterator[Clip]:
        for i in range(len(self)):
            yield self[i]
