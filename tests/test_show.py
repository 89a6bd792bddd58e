"""``tokbench.show``: the pictures show the engine's own keep sets, one animation frame per step, a strip of known
size, and one-line errors for what it cannot write."""

from __future__ import annotations

import pytest
import torch
from PIL import Image

from tokbench.config import MethodConfig
from tokbench.data.synthetic import Clip
from tokbench.errors import ConfigError
from tokbench.models.detector import DetectorSpec, ViTDetector
from tokbench.models.zoo import load_model, wrap_model
from tokbench.selection import rollout_keep_indices
from tokbench.show import DIM, check_paths, dim_dropped, figure_size, render_clip, write

PATCH = 16
CONFIGS = [MethodConfig(policy=p, keep_ratio=0.25, reset_every=0) for p in ("rgtp", "grid", "random")]


@pytest.fixture(scope="module")
def detector():
    torch.manual_seed(0)
    spec = DetectorSpec(img_size=64, depth=2, embed_dim=64, num_heads=2, head_dim=32)
    return wrap_model("tiny-det", ViTDetector(spec))


def toy_clip(frames: int = 3, size: int = 64) -> Clip:
    g = torch.Generator().manual_seed(1)
    targets = [{"boxes": torch.tensor([[4.0, 4.0, 30.0, 28.0]]), "labels": torch.tensor([0])}] * frames
    return Clip(0.2 + 0.8 * torch.rand(frames, 3, size, size, generator=g), "toy", targets=targets)


def engine_keeps(loaded, clip: Clip, config: MethodConfig) -> list[torch.Tensor | None]:
    """The engine's kept patch indices ``[n]`` (None = all) per frame, run directly."""
    engine = loaded.engine(config)
    state = engine.new_state(0)
    out = []
    for i in range(clip.frames.shape[0]):
        rec = engine.step(loaded.steps(clip.frames[i : i + 1]), state)
        out.append(None if rec.kept is None else rec.kept[0])
    return out


def test_kept_masks_are_the_engines_and_dropped_patches_are_dimmed(detector):
    clip = toy_clip()
    rendering = render_clip(detector, clip, CONFIGS, max_frames=None)
    assert rendering.indices == [0, 1, 2]
    for run, config in zip(rendering.runs, CONFIGS, strict=True):
        for view, kept, image in zip(run.frames, engine_keeps(detector, clip, config), rendering.images, strict=True):
            expected = torch.ones(16, dtype=torch.bool) if kept is None else torch.zeros(16, dtype=torch.bool)
            if kept is not None:
                expected[kept] = True
            assert torch.equal(view.keep.flatten(), expected)
            assert view.num_kept == (16 if kept is None else 4)
            shown = dim_dropped(image, view.keep, (PATCH, PATCH))
            for y, x in torch.cartesian_prod(torch.arange(4), torch.arange(4)).tolist():
                cell = (slice(None), slice(y * PATCH, (y + 1) * PATCH), slice(x * PATCH, (x + 1) * PATCH))
                if view.keep[y, x]:
                    assert torch.equal(shown[cell], image[cell])
                else:  # dark grey: darker than the frame, equal channels, at most DIM
                    assert (shown[cell].mean(0) < image[cell].mean(0)).all()
                    assert torch.equal(shown[cell][0], shown[cell][1]) and shown[cell].max() <= DIM
    assert [v.kind for v in rendering.runs[0].frames] == ["full", "pruned", "pruned"]


def test_rgtp_heatmap_is_the_one_that_chose_the_kept_set(detector):
    rendering = render_clip(detector, toy_clip(), CONFIGS[:1])
    cfg = CONFIGS[0].resolve(dense=True)
    first, *pruned = rendering.runs[0].frames
    assert first.heatmap is None
    for view in pruned:
        keep = rollout_keep_indices(view.heatmap.flatten()[None], (4, 4), cfg.keep_ratio, cfg.fg_ratio, cfg.bg_ratio,
                                    cfg.order, tie_break=cfg.tie_break)
        assert torch.equal(view.keep.flatten().nonzero().flatten(), keep[0].sort().values)


def test_gif_has_a_frame_per_step_and_strip_has_rows_by_columns(detector, tmp_path):
    rendering = render_clip(detector, toy_clip(5), CONFIGS, sampling=2, strip_frames=2)
    assert rendering.indices == [0, 2, 4] and rendering.strip == [0, 2]
    assert len(rendering.columns) == len(CONFIGS) + 1  # rgtp adds its heatmap panel
    gif, png = write(rendering, tmp_path / "clip.gif", tmp_path / "strip.png")
    with Image.open(gif) as im:
        assert im.n_frames == 3
        assert im.size == figure_size(1, 4)
    with Image.open(png) as im:
        assert im.size == figure_size(2, 4)


def test_timm_classifier_and_mp4(tmp_path):
    av = pytest.importorskip("av")
    loaded = load_model("vit_tiny_patch16_224", img_size=64)
    clip = Clip(toy_clip(2).frames, "plain")  # no targets
    rendering = render_clip(loaded, clip, [MethodConfig(keep_ratio=0.25)], strip_frames=4)
    assert rendering.strip == [0, 1] and rendering.targets is None
    assert all(v.boxes.shape == (0, 4) for v in rendering.runs[0].frames)
    video, png = write(rendering, tmp_path / "clip.mp4", tmp_path / "strip.png")
    with av.open(str(video)) as container:
        assert sum(1 for _ in container.decode(video=0)) == 2
    with Image.open(png) as im:
        assert im.size == figure_size(2, 2)


@pytest.mark.parametrize("gif, png", [("out.avi", "s.png"), ("out.gif", "s.jpg"), ("out", "s.png")])
def test_unknown_suffix_is_a_one_line_config_error(detector, tmp_path, gif, png):
    with pytest.raises(ConfigError) as err:
        check_paths(tmp_path / gif, tmp_path / png)
    assert "\n" not in str(err.value)
    rendering = render_clip(detector, toy_clip(2), CONFIGS[1:2])
    with pytest.raises(ConfigError):
        write(rendering, tmp_path / gif, tmp_path / png)
    assert not list(tmp_path.iterdir())


def test_clip_of_another_size_is_refused(detector):
    with pytest.raises(ConfigError, match="32x32"):
        render_clip(detector, toy_clip(2, size=32), CONFIGS)


def test_show_command_writes_the_animation_and_the_strip(tmp_path, run_cli):
    code, out, err = run_cli("show", "--model", "vit_tiny_patch16_224", "--frames", "2", "--policy", "rgtp", "grid",
                             "--keep", "0.25", "--out", str(tmp_path / "show"))
    assert code == 0, err
    assert (tmp_path / "show" / "show.gif").stat().st_size > 0 and (tmp_path / "show" / "show.png").exists()
