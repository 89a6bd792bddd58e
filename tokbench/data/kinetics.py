"""Action recognition clips from a folder of video files plus a CSV of labels (Kinetics, EPIC-Kitchens style).

Two CSV layouts, told apart by the header:

- Kinetics: ``label,youtube_id,time_start,time_end[,split,...]``. The video of a row is the file
  ``<youtube_id>_<time_start:06d>_<time_end:06d>.<ext>`` anywhere under ``root`` (the usual layout of downloaded,
  already trimmed clips), else the one file whose stem starts with ``youtube_id``; the segment is the whole file.
- Generic / EPIC: ``video,label[,start_frame,stop_frame]`` (``video_id`` is accepted for ``video``). ``video`` is a
  path relative to ``root`` or a file stem found anywhere under it. ``start_frame`` / ``stop_frame`` are 0-based
  indices of decoded frames at the video's native rate, stop exclusive (EPIC-Kitchens' 1-based inclusive
  ``start_frame``/``stop_frame`` are ``start_frame - 1`` / ``stop_frame`` here); without them the segment is the
  whole file.

Rows whose video is missing are skipped (logged, counted in ``spec()``). ``label_column`` picks the label column
(e.g. EPIC's ``verb_class``). Class names come from ``classes`` (a text file, one name per line, line order =
class index); otherwise, when every label is an integer, label ``k`` is class ``k`` (names ``"0" .. "max"``);
otherwise they are the sorted unique labels of every row of the CSV, so neither ``split``, ``max_clips`` nor missing
videos change the mapping. Pass ``classes`` when train and val labels come from different CSVs.

Views (docs/method.md 9.2): ``views=1`` is one centred clip per video, centre-cropped; ``views=12`` is ViViT's
multi-view test: 4 temporal windows evenly spaced over the segment x 3 spatial crops (start, centre, end of the
longer side), each view its own clip; the prediction per video averages the logits of its 12 views.
"""

from __future__ import annotations

import bisect
import csv
import logging
from dataclasses import dataclass
from pathlib import Path

import torch

from tokbench.data.synthetic import Clip
from tokbench.data.video import (
    check_sampling,
    count_frames,
    crop_offsets,
    list_videos,
    read_frames_at,
    resize_centre_crop,
    resize_short_side,
)
from tokbench.errors import ConfigError, DataError

log = logging.getLogger(__name__)

VIEWS = (1, 12)  # views per video: one centred clip, or ViViT's multi-view test
TEMPORAL_VIEWS, SPATIAL_VIEWS = 4, 3  # the 12 views: 4 temporal windows x 3 spatial crops


def centred_indices(num_segment_frames: int, num_frames: int, stride: int) -> list[int]:
    """``num_frames`` frame indices ``stride`` apart, centred in a segment of ``num_segment_frames`` frames.

    The clip spans ``(num_frames - 1) * stride + 1`` frames starting at ``max(0, (L - span) // 2)``; indices past the
    segment's last frame repeat it (a segment shorter than the span starts at 0).
    """
    if num_segment_frames < 1 or num_frames < 1 or stride < 1:
        raise ConfigError(f"cannot sample {num_frames} frames at stride {stride} from {num_segment_frames} frames")
    span = (num_frames - 1) * stride + 1
    first = max(0, (num_segment_frames - span) // 2)
    return [min(first + k * stride, num_segment_frames - 1) for k in range(num_frames)]


def spread_indices(num_segment_frames: int, num_frames: int, stride: int, num_windows: int) -> list[list[int]]:
    """``num_windows`` clips of ``num_frames`` frame indices ``stride`` apart, evenly spaced over a segment of
    ``num_segment_frames`` frames: window ``k`` starts at ``k * (L - span) // (num_windows - 1)`` (the first at 0, the
    last ending on the last frame; ``span = (num_frames - 1) * stride + 1``). A segment shorter than the span starts
    every window at 0 and repeats its last frame, as ``centred_indices``."""
    if num_segment_frames < 1 or num_frames < 1 or stride < 1 or num_windows < 1:
        raise ConfigError(f"cannot sample {num_windows} x {num_frames} frames at stride {stride} "
                          f"from {num_segment_frames} frames")
    slack = max(0, num_segment_frames - (num_frames - 1) * stride - 1)
    starts = [k * slack // max(1, num_windows - 1) for k in range(num_windows)]
    return [[min(first + i * stride, num_segment_frames - 1) for i in range(num_frames)] for first in starts]


@dataclass(frozen=True)
class Segment:
    """One labelled clip: frames ``[start_frame, stop_frame)`` of ``path`` (``stop_frame`` None: to the end)."""

    path: Path
    label: int
    clip_id: str
    start_frame: int = 0
    stop_frame: int | None = None


class _VideoIndex:
    """The video files under ``root``, looked up by relative path, exact stem or stem prefix."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.by_stem: dict[str, list[Path]] = {}
        for path in list_videos(root):
            self.by_stem.setdefault(path.stem, []).append(path)
        self.stems = sorted(self.by_stem)

    def _one(self, paths: list[Path], what: str) -> Path:
        if len(paths) > 1:
            names = ", ".join(str(p.relative_to(self.root)) for p in paths[:3])
            raise DataError(f"{what} matches several videos under {self.root}: {names}")
        return paths[0]

    def find(self, name: str) -> Path | None:
        """The video at ``root / name``, else the one whose stem is ``Path(name).stem``; None if none."""
        path = self.root / name
        if path.is_file():
            return path
        paths = self.by_stem.get(Path(name).stem)
        return self._one(paths, repr(name)) if paths else None

    def find_prefix(self, prefix: str) -> Path | None:
        """The one video whose stem starts with ``prefix``; None if none."""
        start = bisect.bisect_left(self.stems, prefix)
        stems = []
        for stem in self.stems[start:]:
            if not stem.startswith(prefix):
                break
            stems.append(stem)
        return self._one([p for s in stems for p in self.by_stem[s]], f"id {prefix!r}") if stems else None


def _read_rows(csv_path: Path) -> list[dict[str, str]]:
    try:
        with csv_path.open(newline="") as f:
            rows = list(csv.DictReader(f))
    except (OSError, UnicodeDecodeError, csv.Error) as err:
        raise DataError(f"cannot read label CSV {csv_path}: {err}") from err
    if not rows:
        raise DataError(f"label CSV {csv_path} has no rows")
    return [{k.strip(): (v or "").strip() for k, v in row.items() if k is not None} for row in rows]


def _class_names(labels: list[str], classes: Path | None) -> tuple[str, ...]:
    if classes is not None:
        try:
            names = tuple(line.strip() for line in classes.read_text().splitlines() if line.strip())
        except OSError as err:
            raise DataError(f"cannot read classes file {classes}: {err}") from err
        unknown = sorted(set(labels) - set(names))
        if unknown:
            raise DataError(f"labels not in classes file {classes}: {', '.join(unknown[:5])}")
        return names
    if all(label.isdigit() for label in labels):
        return tuple(str(k) for k in range(max(int(label) for label in labels) + 1))
    return tuple(sorted(set(labels)))


def _frame(row: dict[str, str], key: str, csv_path: Path, n: int) -> int | None:
    text = row.get(key, "")
    if not text:
        return None
    if not text.isdigit():
        raise DataError(f"{csv_path} line {n}: {key} must be a non-negative integer, got {text!r}")
    return int(text)


def _kinetics_name(row: dict[str, str]) -> str | None:
    try:
        return f"{row['youtube_id']}_{int(float(row['time_start'])):06d}_{int(float(row['time_end'])):06d}"
    except (KeyError, ValueError):
        return None


def read_segments(root: Path, csv_path: Path, *, label_column: str = "label", split: str | None = None,
                  classes: Path | None = None) -> tuple[list[Segment], tuple[str, ...], int]:
    """Parse ``csv_path`` (module docstring): ``(segments with a video, class_names, number of rows skipped)``."""
    rows = _read_rows(csv_path)
    columns = list(rows[0])
    kinetics = "youtube_id" in columns
    video_column = next((c for c in ("video", "video_id") if c in columns), None)
    if not kinetics and video_column is None:
        raise DataError(f"label CSV {csv_path} needs a youtube_id or video column, has {', '.join(columns)}")
    if label_column not in columns:
        raise DataError(f"label CSV {csv_path} has no label column {label_column!r} (columns: {', '.join(columns)})")
    class_names = _class_names([row[label_column] for row in rows], classes)
    numbered = list(enumerate(rows, start=2))  # CSV line numbers; line 1 is the header
    if split is not None:
        if "split" not in columns:
            raise DataError(f"label CSV {csv_path} has no split column to select split {split!r}")
        numbered = [(n, row) for n, row in numbered if row["split"] == split]
        if not numbered:
            raise DataError(f"label CSV {csv_path} has no rows of split {split!r}")
    label_of = {name: k for k, name in enumerate(class_names)}
    index = _VideoIndex(root)
    segments, missing = [], 0
    for n, row in numbered:
        if kinetics:
            exact = _kinetics_name(row)
            path = (exact and index.find(exact)) or index.find_prefix(row["youtube_id"])
            start, stop = 0, None
        else:
            path = index.find(row[video_column])
            start, stop = _frame(row, "start_frame", csv_path, n) or 0, _frame(row, "stop_frame", csv_path, n)
        if path is None:
            missing += 1
            log.warning("no video for %s line %d under %s", csv_path.name, n, root)
            continue
        if stop is not None and stop <= start:
            raise DataError(f"{csv_path} line {n}: stop_frame {stop} must be greater than start_frame {start}")
        clip_id = path.relative_to(root).as_posix()
        if start or stop is not None:
            clip_id += f"@{start}-{'' if stop is None else stop}"
        segments.append(Segment(path, label_of[row[label_column]], clip_id, start, stop))
    if not segments:
        raise DataError(f"none of the {len(numbered)} videos listed in {csv_path} is under {root}")
    return segments, class_names, missing


class LabelledVideos:
    """Labelled action clips from video files and a label CSV (layouts in the module docstring), decoded lazily.

    ViViT's test sampling, ``views`` clips per video (``len`` = videos x views; the views of video ``j`` are clips
    ``j * views ... j * views + views - 1``, all with ``video_id`` = the video's clip id and its ``label``):

    - ``views=1``: ``dataset[j]`` has ``frames`` float32 ``[num_frames, 3, size, size]`` in [0, 1]: ``num_frames``
      frames ``stride`` native frames apart, centred in the segment (``centred_indices``; a short segment repeats
      its last frame), each resized so its shorter side is ``short_side`` (default ``size``; bilinear, antialiased)
      and centre-cropped to ``size x size``.
    - ``views=12``: view ``v`` is temporal window ``v // 3`` of 4 evenly spaced ones (``spread_indices``) and
      spatial crop ``v % 3`` (``crop_offsets``: start, centre, end of the longer side after the shorter side is
      resized to ``short_side``). A video is decoded once for its 12 views, which share its frames in memory.

    ``label`` indexes ``class_names``; ``max_clips`` counts videos.
    """

    def __init__(self, root: str | Path, labels_csv: str | Path, *, size: int = 224, num_frames: int = 32,
                 stride: int = 2, short_side: int | None = None, max_clips: int | None = None,
                 label_column: str = "label", split: str | None = None, classes: str | Path | None = None,
                 views: int = 1) -> None:
        check_sampling(size=size, num_frames=num_frames, stride=stride, max_clips=max_clips)
        if short_side is not None and short_side < size:
            raise ConfigError(f"short side {short_side} px is smaller than the crop size {size} px")
        if views not in VIEWS:
            raise ConfigError(f"views must be 1 or 12 (3 spatial x 4 temporal), got {views}")
        self.root, self.labels_csv = Path(root), Path(labels_csv)
        if not self.root.is_dir():
            raise DataError(f"video folder {self.root} does not exist")
        self.classes = None if classes is None else Path(classes)
        self.segments, self.class_names, self.missing_videos = read_segments(
            self.root, self.labels_csv, label_column=label_column, split=split, classes=self.classes)
        self.segments = self.segments[:max_clips]
        self.size, self.num_frames, self.stride, self.short_side = size, num_frames, stride, short_side
        self.label_column, self.split, self.views = label_column, split, views
        self._decoded: tuple[int, torch.Tensor] | None = None  # (video, its 4 windows resized) shared by its views

    def __len__(self) -> int:
        return len(self.segments) * self.views

    def label(self, index: int) -> int:
        """The class index of clip ``index``, without decoding it."""
        return self.segments[index // self.views].label

    def _segment_frames(self, video: int) -> tuple[Segment, int]:
        seg = self.segments[video]
        stop = count_frames(seg.path) if seg.stop_frame is None else seg.stop_frame
        if stop <= seg.start_frame:
            raise DataError(f"video {seg.path} has {stop} frames, none from start_frame {seg.start_frame}")
        return seg, stop - seg.start_frame

    def _windows(self, video: int) -> list[list[int]]:
        """The decoded-frame indices (in the file) of each temporal window of ``video``."""
        seg, length = self._segment_frames(video)
        if self.views == 1:
            windows = [centred_indices(length, self.num_frames, self.stride)]
        else:
            windows = spread_indices(length, self.num_frames, self.stride, TEMPORAL_VIEWS)
        return [[seg.start_frame + k for k in window] for window in windows]

    def frame_indices(self, index: int) -> list[int]:
        """The decoded-frame indices (in the file) that clip ``index`` reads; counts the file's frames if needed."""
        return self._windows(index // self.views)[index % self.views // SPATIAL_VIEWS]

    def __getitem__(self, index: int) -> Clip:
        if not 0 <= index < len(self):
            raise IndexError(f"clip index {index} out of range for {len(self)} clips")
        video, view = divmod(index, self.views)
        seg = self.segments[video]
        if self.views == 1:
            frames = read_frames_at(seg.path, self.frame_indices(index),
                                    transform=lambda frame: resize_centre_crop(frame, self.size, self.short_side))
            return Clip(frames=frames, clip_id=seg.clip_id, label=seg.label, video_id=seg.clip_id)
        if self._decoded is None or self._decoded[0] != video:
            windows = self._windows(video)
            resized = read_frames_at(seg.path, [i for window in windows for i in window],
                                     transform=lambda frame: resize_short_side(frame, self.short_side or self.size))
            self._decoded = video, resized.unflatten(0, (TEMPORAL_VIEWS, self.num_frames))
        window, crop = divmod(view, SPATIAL_VIEWS)
        top, left = crop_offsets(*self._decoded[1].shape[-2:], self.size, SPATIAL_VIEWS)[crop]
        frames = self._decoded[1][window, :, :, top : top + self.size, left : left + self.size]  # a view, no copy
        return Clip(frames=frames, clip_id=f"{seg.clip_id}#t{window}s{crop}", label=seg.label, video_id=seg.clip_id)

    def spec(self) -> dict:
        """The data specification, for run provenance."""
        return {
            "name": "labelled-videos",
            "task": "action",
            "root": str(self.root.resolve()),
            "labels_csv": str(self.labels_csv.resolve()),
            "label_column": self.label_column,
            "split": self.split,
            "classes_file": None if self.classes is None else str(self.classes.resolve()),
            "num_clips": len(self),
            "missing_videos": self.missing_videos,
            "class_names": list(self.class_names),
            "frames": "float32 [num_frames, 3, size, size] RGB in [0, 1]",
            "size": self.size,
            "num_frames": self.num_frames,
            "frame_stride": self.stride,
            "views": self.views,
            "frame_rule": ("num_frames frames stride apart centred in the segment, last frame repeated if short"
                           if self.views == 1 else
                           "4 windows of num_frames frames stride apart, evenly spaced from the segment's first to "
                           "its last frame, last frame repeated if short"),
            "resize": (f"shorter side to {self.short_side or self.size} (bilinear, antialias), "
                       + ("centre crop to size" if self.views == 1 else
                          "3 crops of size x size: start, centre and end of the longer side")),
            "prediction": "per video: softmax of the mean logits over its views; top-1 per video",
        }
