"""ImageNet VID (ILSVRC2015 VID) snippets as detection clips, in the dataset's own directory layout.

::

    root/Data/VID/<split>/<snippet>/000000.JPEG, 000001.JPEG, ...
    root/Annotations/VID/<split>/<snippet>/000000.xml, ...      (Pascal-VOC XML, one file per frame)
    root/ImageSets/VID/<split>.txt                              (optional)

``<snippet>`` may have several parts (train snippets live in ``ILSVRC2015_VID_train_000N/``). The split list holds
either frame lines ``<snippet>/<frame> <global index>`` (the official ``val.txt``: only the listed frames are used,
in listed order) or snippet lines ``<snippet>`` (every frame of the snippet); anything after the first token is
ignored. Without a split list, every folder of JPEGs under ``Data/VID/<split>`` is a snippet.

Each XML ``<object>`` has ``<name>`` (a WordNet id of ``VID_CLASSES``), ``<trackid>`` and ``<bndbox>`` with
``xmin ymin xmax ymax`` in pixels of the frame; boxes are clipped to the frame and then scaled like the picture.
JPEGs are read and resized with Pillow (a dependency of torchvision and matplotlib), as detectron2 does.

Input rule (ViTDet's test protocol, docs/method.md 9.1): each frame is resized (bilinear) so that its short edge is
``640 * size / 1024`` px (420 at 672) with the long edge at most ``size``, placed at the top left of a
``size x size`` canvas and zero-padded bottom/right *after* normalisation: clips carry the picture region
``valid_hw`` and ``LoadedModel.steps`` zeroes the rest.
"""

from __future__ import annotations

import xml.etree.ElementTree as ET
from pathlib import Path

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError

from tokbench.data.motion import boxes_by_track, motion_iou
from tokbench.data.synthetic import Clip
from tokbench.data.video import LazyFrames, check_sampling, fit_size, to_float
from tokbench.errors import DataError

SHORT_EDGE_PER_SIZE = 640 / 1024  # ViTDet on VID: short edge 640 px at input size 1024, 420 px at 672

# The 30 VID classes in the devkit's order (map_vid.txt): (WordNet id, name); label = position in this tuple.
VID_CLASSES = (
    ("n02691156", "airplane"),
    ("n02419796", "antelope"),
    ("n02131653", "bear"),
    ("n02834778", "bicycle"),
    ("n01503061", "bird"),
    ("n02924116", "bus"),
    ("n02958343", "car"),
    ("n02402425", "cattle"),
    ("n02084071", "dog"),
    ("n02121808", "domestic_cat"),
    ("n02503517", "elephant"),
    ("n02118333", "fox"),
    ("n02510455", "giant_panda"),
    ("n02342885", "hamster"),
    ("n02374451", "horse"),
    ("n02129165", "lion"),
    ("n01674464", "lizard"),
    ("n02484322", "monkey"),
    ("n03790512", "motorcycle"),
    ("n02324045", "rabbit"),
    ("n02509815", "red_panda"),
    ("n02411705", "sheep"),
    ("n01726692", "snake"),
    ("n02355227", "squirrel"),
    ("n02129604", "tiger"),
    ("n04468005", "train"),
    ("n01662784", "turtle"),
    ("n04530566", "watercraft"),
    ("n02062744", "whale"),
    ("n02391049", "zebra"),
)
VID_LABELS = {wnid: label for label, (wnid, _) in enumerate(VID_CLASSES)}


def parse_split_list(path: Path) -> list[tuple[str, list[int] | None]]:
    """``[(snippet, frame indices or None for all frames)]`` in file order from an ``ImageSets/VID`` list."""
    snippets: dict[str, list[int] | None] = {}
    for n, line in enumerate(path.read_text().splitlines(), start=1):
        if not line.strip():
            continue
        name = line.split()[0].strip("/")
        head, _, tail = name.rpartition("/")
        if head and tail.isdigit():
            frames = snippets.setdefault(head, [])
            if frames is not None:
                frames.append(int(tail))
        elif name:
            snippets[name] = None
        else:
            raise DataError(f"{path}:{n}: cannot parse split list line {line!r}")
    return list(snippets.items())


def read_jpeg(path: Path, size_hw: tuple[int, int] | None = None, *,
              source_hw: tuple[int, int] | None = None) -> torch.Tensor:
    """One frame, float32 ``[3, H, W]`` RGB in [0, 1]; with ``size_hw = (h, w)`` resized to it first (Pillow,
    bilinear, on the 8-bit image, as detectron2's ``ResizeShortestEdge``). ``source_hw``: the ``(H, W)`` the file
    must have (``DataError`` otherwise)."""
    try:
        with Image.open(path) as image:
            if source_hw is not None and (image.height, image.width) != source_hw:
                raise DataError(f"{path} is {image.width}x{image.height} px, expected {source_hw[1]}x{source_hw[0]} "
                                "(the snippet's first frame)")
            image = image.convert("RGB")
            if size_hw is not None and (image.height, image.width) != size_hw:
                image = image.resize(size_hw[::-1], Image.Resampling.BILINEAR)
            rgb = np.array(image)
    except (OSError, UnidentifiedImageError) as err:
        raise DataError(f"cannot read image {path}: {err}") from err
    return to_float(rgb)


def jpeg_size(path: Path) -> tuple[int, int]:
    """``(height, width)`` of an image, from its header."""
    try:
        with Image.open(path) as image:
            return image.height, image.width
    except (OSError, UnidentifiedImageError) as err:
        raise DataError(f"cannot read image {path}: {err}") from err


def input_geometry(height: int, width: int, size: int) -> tuple[int, int, float]:
    """ViTDet's test resize of a ``height x width`` frame at input size ``size``: ``(h, w, scale)``, the picture
    ``h x w`` px at the top left of ``size x size``; short edge ``640 * size / 1024``, long edge at most ``size``."""
    return fit_size(height, width, size, short_side=SHORT_EDGE_PER_SIZE * size)


def read_annotation(path: Path, width: int, height: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Boxes float32 ``[M, 4]`` xyxy px (clipped to the frame), labels int64 ``[M]`` and track ids int64 ``[M]``."""
    try:
        objects = ET.parse(path).getroot().findall("object")
        rows = [
            (*(float(obj.findtext(f"bndbox/{k}")) for k in ("xmin", "ymin", "xmax", "ymax")),
             obj.findtext("name", "").strip(), int(obj.findtext("trackid", "-1")))
            for obj in objects
        ]
    except (OSError, ET.ParseError, TypeError, ValueError) as err:
        raise DataError(f"cannot read annotation {path}: {err}") from err
    unknown = sorted({r[4] for r in rows} - VID_LABELS.keys())
    if unknown:
        raise DataError(f"{path}: objects of unknown VID class {', '.join(unknown)}")
    boxes = np.array([r[:4] for r in rows], dtype=np.float32).reshape(-1, 4)
    np.clip(boxes, 0, [width, height, width, height], out=boxes)
    labels = np.array([VID_LABELS[r[4]] for r in rows], dtype=np.int64)
    track_ids = np.array([r[5] for r in rows], dtype=np.int64)
    return boxes, labels, track_ids


class ImageNetVID:
    """ImageNet VID snippets as detection clips (layout in the module docstring), one whole snippet per clip.

    ``dataset[i]`` is a ``Clip`` of snippet ``i``: ``frames`` float32 ``[T, 3, size, size]`` in [0, 1] (a
    ``LazyFrames``: each JPEG is read when indexed, so a long snippet is never held in memory), the snippet's frames
    ``0, stride, 2 * stride, ...`` (at most ``num_frames``; default ``None``: all of them), each resized by
    ``input_geometry`` to the top-left ``valid_hw = (h, w)`` region, the rest 0 here and exactly 0 in the network
    input; ``targets`` per frame ``{"boxes": float32 [M, 4] xyxy px of the network input, "labels": int64 [M]}``
    with labels indexing ``class_names`` and ``"motion_iou": float32 [M]`` (FGFA, over the snippet's frames);
    ``track_ids`` per frame int64 ``[M]`` (the XML ``trackid``). ``clip_id``
    is the snippet name. Annotations are parsed when the clip is built.
    """

    class_names = tuple(name for _, name in VID_CLASSES)

    def __init__(self, root: str | Path, split: str = "val", *, size: int = 672, num_frames: int | None = None,
                 stride: int = 1, max_clips: int | None = None) -> None:
        check_sampling(size=size, num_frames=num_frames, stride=stride, max_clips=max_clips)
        self.root, self.split = Path(root), split
        self.size, self.num_frames, self.stride = size, num_frames, stride
        self.frames_dir = self.root / "Data" / "VID" / split
        self.annotations_dir = self.root / "Annotations" / "VID" / split
        if not self.frames_dir.is_dir():
            raise DataError(f"no ImageNet VID frames folder {self.frames_dir} (expected root/Data/VID/{split}/)")
        self.split_list = self.root / "ImageSets" / "VID" / f"{split}.txt"
        if self.split_list.is_file():
            self.snippets = parse_split_list(self.split_list)
        else:
            folders = sorted({p.parent for p in self.frames_dir.rglob("*.JPEG")})
            self.snippets = [(p.relative_to(self.frames_dir).as_posix(), None) for p in folders]
        if not self.snippets:
            source = self.split_list if self.split_list.is_file() else self.frames_dir
            raise DataError(f"no ImageNet VID snippets in {source}")
        self.snippets = self.snippets[:max_clips]

    def __len__(self) -> int:
        return len(self.snippets)

    def frame_names(self, index: int) -> list[str]:
        """The frame names (``"000000"``, ...) that clip ``index`` reads, after stride and ``num_frames``."""
        snippet, listed = self.snippets[index]
        if listed is None:
            folder = self.frames_dir / snippet
            if not folder.is_dir():
                raise DataError(f"no frames folder for snippet {snippet}: {folder}")
            names = sorted(p.stem for p in folder.glob("*.JPEG"))
        else:
            names = [f"{i:06d}" for i in listed]
        return names[:: self.stride][: self.num_frames]

    def __getitem__(self, index: int) -> Clip:
        if not 0 <= index < len(self.snippets):
            raise IndexError(f"clip index {index} out of range for {len(self.snippets)} clips")
        snippet = self.snippets[index][0]
        paths = [self.frames_dir / snippet / f"{name}.JPEG" for name in self.frame_names(index)]
        if not paths:
            raise DataError(f"no frames in snippet {snippet} ({self.frames_dir / snippet})")
        H, W = jpeg_size(paths[0])  # a snippet's frames share one size (checked as each one is read)
        h, w, _ = input_geometry(H, W, self.size)
        scale = np.array([w / W, h / H] * 2, dtype=np.float32)  # per axis, as the picture was rounded (detectron2)
        targets, track_ids = [], []
        for path in paths:
            boxes, labels, tracks = read_annotation(self.annotations_dir / snippet / f"{path.stem}.xml", W, H)
            targets.append({"boxes": torch.from_numpy(boxes * scale), "labels": torch.from_numpy(labels)})
            track_ids.append(torch.from_numpy(tracks))
        by_track = boxes_by_track([t["boxes"].numpy() for t in targets], [i.numpy() for i in track_ids])
        miou = motion_iou(by_track)  # [T, tracks], over the snippet's frames (FGFA: +-10 frames)
        ids = np.unique(np.concatenate([i.numpy() for i in track_ids] or [np.zeros(0, np.int64)]))
        for t, (target, tracks) in enumerate(zip(targets, track_ids, strict=True)):
            target["motion_iou"] = torch.from_numpy(miou[t, np.searchsorted(ids, tracks.numpy())].astype(np.float32))

        def frame(i: int) -> torch.Tensor:
            out = torch.zeros(3, self.size, self.size)
            out[:, :h, :w] = read_jpeg(paths[i], (h, w), source_hw=(H, W))
            return out

        frames = LazyFrames(len(paths), (3, self.size, self.size), frame)
        return Clip(frames=frames, clip_id=snippet, targets=targets, track_ids=track_ids, valid_hw=(h, w))

    def spec(self) -> dict:
        """The data specification, for run provenance."""
        return {
            "name": "imagenet-vid",
            "task": "detection",
            "root": str(self.root.resolve()),
            "split": self.split,
            "split_list": str(self.split_list) if self.split_list.is_file() else None,
            "num_clips": len(self),
            "class_names": list(self.class_names),
            "frames": "float32 [T, 3, size, size] RGB in [0, 1]",
            "size": self.size,
            "num_frames": self.num_frames,
            "frame_stride": self.stride,
            "frame_rule": "one clip per snippet: its (listed) frames 0, stride, 2*stride, ... (at most num_frames)",
            "resize": "short edge to 640*size/1024, long edge <= size (Pillow bilinear); top left of size x size; "
                      "zero pad bottom/right after normalisation; boxes * (w/W, h/H)",
        }
