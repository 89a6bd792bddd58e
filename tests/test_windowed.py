"""ViTDet-style backbones (timm VisionTransformerSAM) through the engine, and detectron2 checkpoint conversion."""

import pytest
import torch

from tokbench.adapters import adapter_for
from tokbench.config import MethodConfig
from tokbench.engine import StreamingEngine
from tokbench.errors import ConfigError, DataError
from tokbench.models.checkpoint import load_state
from tokbench.models.vitdet import convert_detectron2, vitdet_b
from tokbench.tasks import FeatureTask
from tokbench.vit_windowed import VisionTransformerSAM


def _tiny_sam(img=80, window=2, rel_pos=True, seed=0):
    """Grid 5 x 5 with windows of 2: the grid is padded to 6 x 6, as ViTDet pads 1024 / 16 = 64 to 70."""
    torch.manual_seed(seed)
    model = VisionTransformerSAM(img_size=img, patch_size=16, embed_dim=32, depth=3, num_heads=2, window_size=window,
                                 global_attn_indexes=(1,), use_rel_pos=rel_pos, neck_chans=0, num_classes=0)
    for p in model.parameters():  # timm zero-inits rel-pos tables and biases: make every term matter
        torch.nn.init.normal_(p, std=0.2)
    return model.eval()


def _pick(t, pos):
    return t.gather(2, pos[:, None, :, None].expand(-1, t.shape[1], -1, t.shape[3]))


@pytest.mark.parametrize("img", [64, 80])
def test_dense_engine_equals_timm_blocks(img):
    model = _tiny_sam(img)
    frames = torch.randn(2, 3, img, img)
    with torch.no_grad():
        expected = model.blocks(model.patch_embed(frames) + model.pos_embed).flatten(1, 2)
    engine = StreamingEngine(model, MethodConfig(policy="dense"), FeatureTask(dense=True))
    out = engine.step(frames, engine.new_state()).predictions
    assert out.shape == expected.shape and torch.allclose(out, expected, atol=1e-4)


@pytest.mark.parametrize("block", [0, 1])  # windowed (padded grid), global with relative positions
def test_kept_queries_equal_their_rows_of_full_attention(block):
    model = _tiny_sam(80)
    vit = adapter_for(model)
    z, grid = vit.embed(torch.randn(2, 3, 80, 80))
    blk = vit.blocks[block]
    q, k, v = vit.qkv(blk, vit.tokens(z, grid))
    full, _ = vit.attend(blk, q, k, v, need_probs=False)
    gen = torch.Generator().manual_seed(1)
    pos = torch.stack([torch.randperm(25, generator=gen)[:9].sort().values for _ in range(2)])
    kept, _ = vit.attend(blk, _pick(q, pos), k, v, need_probs=False, positions=pos)
    assert torch.allclose(kept, _pick(full, pos), atol=1e-5)
    assert not torch.allclose(kept, _pick(full, pos.flip(1)), atol=1e-3)  # positions matter


def test_rgtp_prunes_a_windowed_model_and_rolls_out_global_blocks_only():
    model = _tiny_sam(80)
    engine = StreamingEngine(model, MethodConfig(keep_ratio=0.3, window=1, reset_every=3), FeatureTask(dense=True))
    assert [engine.vit.is_global(i) for i in range(3)] == [False, True, False]
    records = engine.run_clip(torch.randn(5, 1, 3, 80, 80))
    assert [r.kind for r in records] == ["full", "pruned", "pruned", "reset", "pruned"]
    assert [r.num_kept for r in records] == [25, 8, 8, 25, 8]
    for r in records:
        assert r.predictions.shape == (1, 25, 32) and torch.allclose(r.heatmap.sum(), torch.tensor(1.0))
    state = engine.new_state()
    engine.step(torch.randn(1, 3, 80, 80), state)
    assert list(state.rows) == [1]  # attention-row buffers for the global block only


def test_windowed_models_refuse_what_they_cannot_do():
    model = _tiny_sam(80)
    with pytest.raises(ConfigError, match="windowed"):
        StreamingEngine(model, MethodConfig(policy="cls-attn"), FeatureTask(dense=True))
    with pytest.raises(ConfigError, match="every key"):
        StreamingEngine(model, MethodConfig(), FeatureTask(dense=False))


def test_vitdet_b_architecture():
    model = vitdet_b(672)
    vit = adapter_for(model)
    assert vit.depth == 12 and vit.embed_dim == 768 and vit.num_heads == 12 and vit.num_prefix == 0
    assert [i for i in range(12) if vit.is_global(i)] == [2, 5, 8, 11]
    assert {b.window_size for b in model.blocks if b.window_size} == {14}
    assert tuple(model.patch_embed.grid_size) == (42, 42) and model.pos_embed.shape == (1, 42, 42, 768)
    assert model.blocks[2].attn.rel_pos_h.shape == (83, 64) and model.blocks[0].attn.rel_pos_h.shape == (27, 64)


def test_detectron2_state_dict_converts_and_loads_strictly():
    source = _tiny_sam(64)  # grid 4 x 4: "pretraining" grid, global rel-pos tables of length 7
    target = _tiny_sam(80, seed=1)  # grid 5 x 5: global rel-pos length 9
    d2 = {f"backbone.net.{k}": v for k, v in source.state_dict().items()}
    d2["backbone.net.pos_embed"] = torch.cat([torch.zeros(1, 1, 32), source.pos_embed.reshape(1, 16, 32)], dim=1)
    d2["roi_heads.box_predictor.cls_score.weight"] = torch.zeros(3, 8)
    d2["backbone.simfp_2.0.weight"] = torch.zeros(4, 4)
    converted = convert_detectron2(d2, target)
    load_state(target, converted, "d2.pth")  # raises on any missing / unexpected key or shape mismatch
    assert torch.equal(target.blocks[0].attn.qkv.weight, source.blocks[0].attn.qkv.weight)
    assert target.pos_embed.shape == (1, 5, 5, 32) and target.blocks[1].attn.rel_pos_h.shape == (9, 16)
    same_grid = convert_detectron2(d2, _tiny_sam(64))
    assert torch.allclose(same_grid["pos_embed"], source.pos_embed)  # class slot dropped, no resampling
    with pytest.raises(DataError, match="square"):
        convert_detectron2({"pos_embed": torch.zeros(1, 7, 32)}, target)


def test_detectron2_model_zoo_pickle_is_read_with_numpy_only(tmp_path):
    import pickle

    import numpy as np

    from tokbench.models.checkpoint import read_state_dict

    source = _tiny_sam(64)
    arrays = {f"backbone.net.{k}": v.numpy() for k, v in source.state_dict().items()}
    path = tmp_path / "model_final.pkl"
    path.write_bytes(pickle.dumps({"model": arrays, "__author__": "d2", "matching_heuristics": True}, protocol=2))
    target = _tiny_sam(64, seed=1)
    load_state(target, convert_detectron2(read_state_dict(path), target), str(path))
    assert torch.equal(target.blocks[1].attn.rel_pos_w, source.blocks[1].attn.rel_pos_w)
    evil = tmp_path / "evil.pkl"
    evil.write_bytes(pickle.dumps({"model": {"w": np.zeros(2)}, "x": print}))
    with pytest.raises(DataError, match="refusing to unpickle builtins.print"):
        read_state_dict(evil)


def test_window_queries_all_equals_kept_and_computes_every_window():
    from tokbench.frame_flops import frame_costs

    model = _tiny_sam(80, rel_pos=False)
    clip = torch.randn(4, 1, 3, 80, 80)
    runs = {}
    for queries in ("all", "kept"):
        config = MethodConfig(keep_ratio=0.3, reset_every=0, window_queries=queries)
        runs[queries] = StreamingEngine(model, config, FeatureTask(dense=True)).run_clip(clip)
    for a, b in zip(runs["all"], runs["kept"], strict=True):
        assert torch.equal(a.kept, b.kept) if a.kept is not None else b.kept is None
        assert torch.allclose(a.predictions, b.predictions, atol=1e-5)
    costs = {q: frame_costs(StreamingEngine(model, MethodConfig(keep_ratio=0.3, window_queries=q),
                                            FeatureTask(dense=True)), clip[0])["pruned"] for q in ("all", "kept")}
    n = costs["all"].kept_tokens
    # block 2 (windowed, after the cut): 9 padded windows of 4 queries x 4 keys instead of n queries x 4 keys
    saved = 2 * 2 * 16 * 4 * (9 * 4 - n)  # (q k^T + attn v) x heads x head channels x window keys x queries
    assert n == 8 and round((costs["all"].gmacs - costs["kept"].gmacs) * 1e9) == saved


def test_explicit_attention_on_a_windowed_model(monkeypatch):
    model = _tiny_sam(80)
    clip = torch.randn(3, 1, 3, 80, 80)
    calls = {}
    sdpa = torch.nn.functional.scaled_dot_product_attention
    runs = {}
    for mode in ("handle", "explicit"):
        def counted(*args, mode=mode, **kw):
            calls[mode] = calls.get(mode, 0) + 1
            return sdpa(*args, **kw)

        monkeypatch.setattr(torch.nn.functional, "scaled_dot_product_attention", counted)
        config = MethodConfig(keep_ratio=0.3, reset_every=0, sdpa_flops=mode)
        runs[mode] = StreamingEngine(model, config, FeatureTask(dense=True)).run_clip(clip)
    assert calls.get("handle", 0) > 0 and "explicit" not in calls
    for a, b in zip(runs["handle"], runs["explicit"], strict=True):
        assert torch.allclose(a.predictions, b.predictions, atol=1e-5)
