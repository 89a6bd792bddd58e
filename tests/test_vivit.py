"""ViViT-style tubelets: steps of consecutive frames, the paper's ViViT-B encoders, and runs through the engine."""

import torch
import torch.nn.functional as F

from tokbench.config import MethodConfig
from tokbench.data import SyntheticAction
from tokbench.models.action import ActionSpec, ViViTFactorised, to_steps
from tokbench.models.zoo import load_model, wrap_model
from tokbench.pipeline import evaluate, step_indices
from tokbench.rows import video_logits


def test_steps_make_a_2d_patch_embedding_a_tubelet_embedding():
    gen = torch.Generator().manual_seed(0)
    video = torch.randn(2, 3, 4, 32, 32, generator=gen)  # [B, C, T, H, W]
    kernel = torch.randn(8, 3, 2, 16, 16, generator=gen)  # Conv3d tubelet 2 x 16 x 16
    expected = F.conv3d(video, kernel, stride=(2, 16, 16))  # [B, 8, T / 2, 2, 2]
    steps = to_steps(video.permute(2, 0, 1, 3, 4), 2)  # frames [T, B, 3, H, W] -> [T / 2, B, 6, H, W]
    assert steps.shape == (2, 2, 6, 32, 32)
    flat = kernel.permute(0, 2, 1, 3, 4).reshape(8, 6, 16, 16)  # frame-major channels
    got = torch.stack([F.conv2d(s, flat, stride=16) for s in steps], dim=2)
    assert torch.allclose(got, expected, atol=1e-4)
    assert to_steps(torch.zeros(5, 3, 8, 8), 2).shape == (2, 6, 8, 8)  # a trailing odd frame is dropped


def test_step_indices_count_tubelets():
    assert step_indices(32, 1, None, 2) == list(range(0, 32, 2))
    assert step_indices(32, 4, None, 2) == [0, 8, 16, 24]
    assert step_indices(16, 1, 3) == [0, 1, 2]


def test_paper_vivit_b_encoders():
    for name, classes, size in (("vivit_b_k400", 400, 224), ("vivit_b_epic", 397, 320)):
        spec = load_model(name).model.spec
        assert (spec.num_classes, spec.img_size, spec.num_steps) == (classes, size, 16)
        assert (spec.depth, spec.temporal_depth, spec.embed_dim, spec.num_heads, spec.tubelet) == (12, 4, 768, 12, 2)
    model = load_model("vivit_b_k400").model
    assert model.spatial.patch_embed.proj.weight.shape == (768, 6, 16, 16) and model.spatial.cls_token is not None
    assert model.temporal.time_embed.shape == (1, 17, 768) and len(model.temporal.blocks) == 4


def test_tubelet_model_through_the_engine_equals_its_forward():
    torch.manual_seed(0)
    spec = ActionSpec(num_classes=8, num_frames=6, img_size=64, embed_dim=32, depth=2, num_heads=2, tubelet=2)
    model = ViViTFactorised(spec).eval()
    data = SyntheticAction("val", num_clips=2, num_frames=6, size=64)
    loaded = wrap_model("tiny-vivit", model)
    dense, pruned = evaluate(loaded, data, [MethodConfig(policy="dense"), MethodConfig(keep_ratio=0.25, reset_every=0)])
    with torch.no_grad():
        expected = model(torch.stack([loaded.normalize(c.frames) for c in data]))
    assert torch.allclose(video_logits(dense.records), expected, atol=1e-4)
    assert len(dense.frames) == 2 * 3  # 3 steps of 2 frames per clip
    assert {r["kept_tokens"] for r in pruned.frames if r["kind"] == "pruned"} == {4}
    assert 0 <= pruned.row["top1_agreement"] <= 100
