"""The paper's evaluation protocols end to end on tiny fixtures: ViTDet's input rule on ImageNet VID (normalise on
the 0-255 scale, zero padding in the network input), ViViT's 12-view test (logits averaged per video), and the
summary's frame counts (first, full-reset, pattern-reset and pruned frames)."""

from __future__ import annotations

import pytest
import torch
from test_video_data import write_vid, write_video

from tokbench.config import MethodConfig
from tokbench.data import ImageNetVID, LabelledVideos, SyntheticAction
from tokbench.models.action import ActionSpec, ViViTFactorised
from tokbench.models.zoo import LoadedModel, load_model, wrap_model
from tokbench.pipeline import evaluate, run_pair
from tokbench.rows import video_logits


def test_vitdet_normalises_with_imagenet_mean_and_std_on_the_255_scale():
    loaded = load_model("vitdet_b", img_size=64)
    pixel = torch.tensor([128.0, 64.0, 200.0]) / 255  # RGB
    out = loaded.normalize(pixel.view(1, 3, 1, 1)).flatten()
    expected = (torch.tensor([128.0, 64.0, 200.0]) - torch.tensor([123.675, 116.28, 103.53])) / torch.tensor(
        [58.395, 57.12, 57.375])
    torch.testing.assert_close(out, expected)


def test_padding_is_exactly_zero_after_normalisation():
    loaded = LoadedModel("m", "features", None, None, (8, 8), mean=(0.4, 0.5, 0.6), std=(0.2, 0.3, 0.4))
    frames = torch.zeros(2, 3, 8, 8)
    frames[:, :, :5, :6] = 0.5
    steps = loaded.steps(frames, valid_hw=(5, 6))
    torch.testing.assert_close(steps[:, :, :5, :6], ((0.5 - torch.tensor([0.4, 0.5, 0.6])) / torch.tensor(
        [0.2, 0.3, 0.4])).view(1, 3, 1, 1).expand(2, 3, 5, 6))
    assert steps[:, :, 5:].abs().max() == 0 and steps[:, :, :, 6:].abs().max() == 0
    assert loaded.steps(frames)[:, :, 5:].abs().min() > 0  # without a picture region, padding is normalise(0)


def test_imagenet_vid_network_input_is_zero_padded_after_normalisation(tmp_path):
    # 300x200 frames at S = 64: 40x60 of picture, the rest must be exactly 0 in the network input
    data = ImageNetVID(write_vid(tmp_path, num_frames=2, width=300, height=200), size=64)
    loaded = load_model("vit_tiny_patch16_224", img_size=64)
    _, outputs = run_pair(loaded, loaded.engine(MethodConfig(policy="dense")), data[0], 0, 1, None, None)
    frames = data[0].frames[:]
    inputs = loaded.normalize(frames)
    inputs[:, :, 40:] = 0
    inputs[:, :, :, 60:] = 0
    with torch.no_grad():
        expected = loaded.model(inputs)
    torch.testing.assert_close(outputs, expected, atol=1e-4, rtol=1e-4)


@pytest.fixture(scope="module")
def twelve_views(tmp_path_factory):
    """Two labelled 12-frame videos (48x32) as 12 views each, and a tiny 4-frame ViViT (2-frame tubelets)."""
    root = tmp_path_factory.mktemp("views")
    write_video(root / "a.mp4")
    write_video(root / "b.mp4", num_frames=9)
    (root / "labels.csv").write_text("video,label\na.mp4,1\nb.mp4,2\n")
    data = LabelledVideos(root, root / "labels.csv", size=32, num_frames=4, stride=2, views=12)
    torch.manual_seed(0)
    spec = ActionSpec(num_classes=3, num_frames=4, img_size=32, embed_dim=32, depth=2, num_heads=2, tubelet=2)
    return data, wrap_model("tiny-vivit", ViViTFactorised(spec).eval())


def test_run_averages_the_logits_of_each_videos_twelve_views(twelve_views):
    data, loaded = twelve_views
    dense, pruned = evaluate(loaded, data, [MethodConfig(policy="dense"), MethodConfig(keep_ratio=0.5, reset_every=0)])
    with torch.no_grad():
        per_view = torch.cat([loaded.model(loaded.normalize(data[c].frames)[None]) for c in range(len(data))])
    logits = video_logits(dense.records, views=12)
    assert logits.shape == (2, 3)  # one prediction per video
    assert (dense.row["clips_run"], dense.row["videos_run"], dense.row["frames_run"]) == (24, 2, 48)
    torch.testing.assert_close(logits, per_view.view(2, 12, 3).mean(1), atol=1e-4, rtol=1e-4)
    expected_top1 = (per_view.view(2, 12, 3).mean(1).argmax(1) == torch.tensor([1, 2])).float().mean() * 100
    assert dense.row["top1"] == pytest.approx(float(expected_top1))
    assert len(dense.frames) == 24 * 2 and dense.frames[2]["clip"] == "a.mp4#t0s1"  # 2 tubelet steps per view
    assert 0 <= pruned.row["top1_agreement"] <= 100
    [first] = evaluate(loaded, data, [MethodConfig(policy="dense")], videos=1)  # videos counts videos, not views
    assert len(first.frames) == 12 * 2
    torch.testing.assert_close(video_logits(first.records, views=12), logits[:1])


def test_summary_counts_pattern_resets_apart_from_full_frames():
    torch.manual_seed(0)
    spec = ActionSpec(num_classes=4, num_frames=8, img_size=64, embed_dim=32, depth=2, num_heads=2, tubelet=2)
    loaded = wrap_model("tiny-vivit", ViViTFactorised(spec).eval())
    data = SyntheticAction("val", num_clips=2, num_frames=8, size=64)
    # 4 steps per clip, k = 2: t = 0 full, 1 pruned, 2 reset, 3 pruned
    [pattern] = evaluate(loaded, data, [MethodConfig(keep_ratio=0.5, reset_every=2)])  # classification: pattern
    counts = ("frames_run", "frames_full", "frames_reset", "frames_pattern", "frames_pruned", "frac_full_frames",
              "frac_pattern_frames")
    assert {k: pattern.row[k] for k in counts} == {
        "frames_run": 8, "frames_full": 2, "frames_reset": 0, "frames_pattern": 2, "frames_pruned": 4,
        "frac_full_frames": 0.25, "frac_pattern_frames": 0.25}
    assert [r["pattern_reset"] for r in pattern.frames[:4]] == [False, False, True, False]
    [full] = evaluate(loaded, data, [MethodConfig(keep_ratio=0.5, reset_every=2, reset_mode="full")])
    assert (full.row["frames_reset"], full.row["frames_pattern"]) == (2, 0)
    assert full.row["frac_full_frames"] == 0.5 and full.row["frac_pattern_frames"] == 0.0
