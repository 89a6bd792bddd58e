"""The ViT adapter and the streaming engine on tiny timm ViTs."""

import pytest
import timm
import torch

from tokbench.config import MethodConfig
from tokbench.engine import StreamingEngine, frame_kind
from tokbench.errors import ConfigError, UnsupportedModelError
from tokbench.rollout import rollout_vector
from tokbench.tasks import ClassificationTask, FeatureTask

VARIANTS = {
    "cls": {},
    "registers": {"reg_tokens": 4},
    "layerscale": {"init_values": 0.1},
    "no_cls": {"class_token": False, "global_pool": "avg"},
}


def tiny_vit(**kw):
    return timm.create_model("vit_tiny_patch16_224", pretrained=False, img_size=64, depth=3, **kw).eval()


def frames(t=1, b=2, seed=0):
    gen = torch.Generator().manual_seed(seed)
    return [torch.randn(b, 3, 64, 64, generator=gen) for _ in range(t)]


@pytest.mark.parametrize("variant", list(VARIANTS))
@pytest.mark.parametrize("policy,cut", [("dense", "block0"), ("rgtp", "block0"), ("rgtp", "input")])
def test_keeping_every_token_reproduces_forward_features(variant, policy, cut):
    model = tiny_vit(**VARIANTS[variant])
    clip = frames(3)
    config = MethodConfig(policy=policy, keep_ratio=1.0, cut=cut)
    records = StreamingEngine(model, config, FeatureTask()).run_clip(clip)
    for frame, rec in zip(clip, records, strict=True):
        assert torch.allclose(rec.predictions, model.forward_features(frame), atol=1e-5)


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_pruned_sequence_has_prefix_plus_kept_tokens(variant):
    model = tiny_vit(**VARIANTS[variant])
    config = MethodConfig(keep_ratio=0.25, reset_every=0)
    records = StreamingEngine(model, config, FeatureTask()).run_clip(frames(3))
    prefix = model.num_prefix_tokens
    assert records[0].predictions.shape[1] == prefix + 16
    for rec in records[1:]:
        assert rec.kind == "pruned" and rec.num_kept == 4 and rec.kept.shape == (2, 4)
        assert rec.predictions.shape == (2, prefix + 4, model.embed_dim)


def test_schedule_with_resets():
    assert [frame_kind(t, 4) for t in range(9)] == ["full"] + ["pruned"] * 3 + ["reset"] + ["pruned"] * 3 + ["reset"]
    assert [frame_kind(t, 0) for t in range(3)] == ["full", "pruned", "pruned"]
    model = tiny_vit()
    config = MethodConfig(keep_ratio=0.25, window=1, reset_every=4)
    cls_records = StreamingEngine(model, config, ClassificationTask()).run_clip(frames(9))
    assert [r.kind for r in cls_records] == [frame_kind(t, 4) for t in range(9)]
    assert [r.num_kept for r in cls_records] == [16, 4, 4, 4, 8, 4, 4, 4, 8]  # 1in2 pattern resets
    dense_records = StreamingEngine(model, config, FeatureTask(dense=True)).run_clip(frames(9))
    assert [r.num_kept for r in dense_records] == [16, 4, 4, 4, 16, 4, 4, 4, 16]  # full resets


def test_full_frame_heatmap_is_the_class_token_rollout():
    model = tiny_vit()
    for blk in model.blocks:
        blk.attn.fused_attn = False
    attns = []
    hooks = [blk.attn.attn_drop.register_forward_hook(lambda m, i, o: attns.append(o)) for blk in model.blocks]
    clip = frames(1)
    model.forward_features(clip[0])
    for h in hooks:
        h.remove()
    start = torch.zeros(2, 17)
    start[:, 0] = 1
    expected = rollout_vector(attns, start)[:, 1:]
    expected = expected / expected.sum(1, keepdim=True)
    for form in ("vector", "matrix"):
        rec = StreamingEngine(model, MethodConfig(rollout_form=form), ClassificationTask()).run_clip(clip)[0]
        assert torch.allclose(rec.heatmap, expected, atol=1e-6)


def test_dense_context_reuse_is_exact_on_a_static_video():
    model = tiny_vit(class_token=False, global_pool="avg")
    frame = frames(1)[0]
    config = MethodConfig(keep_ratio=0.25, reset_every=0)
    records = StreamingEngine(model, config, FeatureTask(dense=True)).run_clip([frame] * 4)
    reference = model.forward_features(frame)
    for rec in records:
        assert torch.allclose(rec.predictions, reference, atol=1e-5)
    assert [r.num_kept for r in records] == [16, 4, 4, 4]


def test_dense_predictions_of_a_frame_are_not_overwritten_by_later_frames():
    model = tiny_vit()
    clip = frames(3)
    records = StreamingEngine(model, MethodConfig(keep_ratio=1.0), FeatureTask(dense=True)).run_clip(clip)
    for frame, rec in zip(clip, records, strict=True):
        assert torch.allclose(rec.predictions, model.forward_features(frame), atol=1e-5)


def test_without_context_pruning_changes_the_output():
    model = tiny_vit(class_token=False, global_pool="avg")
    frame = frames(1)[0]
    config = MethodConfig(keep_ratio=0.25, reset_every=0, kv_reuse="off")
    records = StreamingEngine(model, config, FeatureTask(dense=True)).run_clip([frame] * 2)
    assert not torch.allclose(records[1].predictions, model.forward_features(frame), atol=1e-3)


@pytest.mark.parametrize("task", [ClassificationTask(), FeatureTask(dense=True)])
def test_batch_of_two_equals_two_single_runs(task):
    model = tiny_vit()
    config = MethodConfig(keep_ratio=0.3, reset_every=3, window=1)
    clip = frames(5)
    both = StreamingEngine(model, config, task).run_clip(clip)
    for i in range(2):
        single = StreamingEngine(model, config, task).run_clip([f[i : i + 1] for f in clip])
        for rb, rs in zip(both, single, strict=True):
            assert torch.equal(rb.kept[i : i + 1] if rb.kept is not None else torch.tensor(0),
                               rs.kept if rs.kept is not None else torch.tensor(0))
            assert torch.allclose(rb.predictions[i : i + 1], rs.predictions, atol=1e-5)
            assert torch.allclose(rb.heatmap[i : i + 1], rs.heatmap, atol=1e-6)


@pytest.mark.parametrize(
    "overrides",
    [dict(block0_columns="keep"), dict(pruned_score_fill="previous"), dict(similarity="cosine"),
     dict(order="gilbert", fg_ratio=0.5, bg_ratio=0.1), dict(head_fusion="mean"), dict(preset="reference"),
     dict(preset="robust"), dict(cut="input")],
)
def test_heatmaps_stay_normalised_under_every_option(overrides):
    preset = overrides.pop("preset", "default")
    config = MethodConfig.from_preset(preset, keep_ratio=0.4, reset_every=4, **overrides)
    for task in (ClassificationTask(), FeatureTask(dense=True)):
        for rec in StreamingEngine(tiny_vit(), config, task).run_clip(frames(6)):
            assert torch.isfinite(rec.heatmap).all() and (rec.heatmap >= 0).all()
            assert torch.allclose(rec.heatmap.sum(1), torch.ones(2), atol=1e-5)
            assert rec.degenerate_heatmaps == 0


def test_unsupported_variants_raise_a_clear_error():
    with pytest.raises(UnsupportedModelError, match="qk-norm"):
        StreamingEngine(
            timm.create_model("vit_tiny_patch16_224", pretrained=False, img_size=32, depth=1, qk_norm=True),
            MethodConfig(),
            FeatureTask(),
        )
    with pytest.raises(UnsupportedModelError, match="not a timm VisionTransformer"):
        StreamingEngine(torch.nn.Linear(2, 2), MethodConfig(), FeatureTask())


def test_pooled_rollout_buffers_cell_rows_and_refreshes_only_cells_with_kept_queries():
    model = tiny_vit()  # 4 x 4 grid and a class token: M = 1 + 2 x 2 cells at p = 2
    engine = StreamingEngine(model, MethodConfig(keep_ratio=0.25, reset_every=0, rollout_pool=2),
                             FeatureTask(dense=True))
    state, clip = engine.new_state(), frames(3)
    full = engine.step(clip[0], state)
    assert {tuple(rows.shape) for rows in state.rows.values()} == {(2, 5, 5)}
    assert torch.allclose(full.heatmap.sum(1), torch.ones(2)) and (full.heatmap > 0).all()
    before = {block: rows.clone() for block, rows in state.rows.items()}
    pruned = engine.step(clip[1], state)
    cells = (pruned.kept // 4 // 2) * 2 + (pruned.kept % 4) // 2  # [B, 4] cell of every kept patch
    for b in range(2):
        untouched = [1 + c for c in range(4) if c not in cells[b].tolist()]
        assert untouched
        for block, rows in state.rows.items():
            if block == 0:  # the cut block's attention ran on every query: every cell is recomputed
                assert all(not torch.equal(rows[b, c], before[0][b, c]) for c in range(5))
                continue
            assert torch.equal(rows[b, untouched], before[block][b, untouched])
            assert not torch.equal(rows[b, 0], before[block][b, 0])  # the class token is always computed


def test_pooling_the_whole_grid_into_one_cell_gives_a_flat_heatmap():
    engine = StreamingEngine(tiny_vit(), MethodConfig(rollout_pool=4), FeatureTask(dense=True))
    record = engine.step(frames(1)[0], engine.new_state())
    assert torch.allclose(record.heatmap, torch.full((2, 16), 1 / 16))


def test_pooled_rollout_configuration_errors():
    with pytest.raises(ConfigError, match="rollout_pool"):
        MethodConfig(rollout_pool=3)
    with pytest.raises(ConfigError, match="K/V reuse"):
        StreamingEngine(tiny_vit(), MethodConfig(rollout_pool=2), ClassificationTask())
    odd = timm.create_model("vit_tiny_patch16_224", pretrained=False, img_size=48, depth=2).eval()  # 3 x 3
    engine = StreamingEngine(odd, MethodConfig(rollout_pool=2), FeatureTask(dense=True))
    with pytest.raises(ConfigError, match="divide"):
        engine.step(torch.randn(1, 3, 48, 48), engine.new_state())
