"""Engine conformance to method.md sections 2.6, 2.7, 4, 5, 6 and 11 (issue 12): pooled rollout, prune_block,
track_features, sdpa_flops, pruned_score_fill, K/V reuse on classification, pattern frames."""

import pytest
import timm
import torch
import torch.nn.functional as F

from tokbench.config import MethodConfig
from tokbench.engine import StreamingEngine
from tokbench.errors import ConfigError
from tokbench.rollout import residual_normalize
from tokbench.tasks import ClassificationTask, FeatureTask


def tiny_vit(depth=3, **kw):
    torch.manual_seed(0)
    return timm.create_model("vit_tiny_patch16_224", pretrained=False, img_size=64, depth=depth, **kw).eval()


def frames(t=1, b=2, seed=0):
    gen = torch.Generator().manual_seed(seed)
    return [torch.randn(b, 3, 64, 64, generator=gen) for _ in range(t)]


def run_logged(engine, clip):
    """Run ``clip`` with fresh state; return the records and, per frame, ``{block: probs [B, H, S, Sk]}``."""
    log: list[dict[int, torch.Tensor]] = []
    attend = engine.vit.attend

    def logged(block, q, k, v, **kw):
        out, probs = attend(block, q, k, v, **kw)
        if probs is not None:
            log[-1][engine.vit.blocks.index(block)] = probs.clone()
        return out, probs

    engine.vit.attend = logged
    state, records = engine.new_state(), []
    for frame in clip:
        log.append({})
        records.append(engine.step(frame, state))
    return records, log


def rms(probs):
    return probs.square().mean(dim=1).sqrt()


def kept_rows(rec, prefix, b):
    """Token index of every row of a block after the cut: prefix tokens, then the kept patches."""
    return list(range(prefix)) + [prefix + j for j in rec.kept[b].tolist()]


# -- 2.6: pooled rollout --------------------------------------------------------------------------------------------


def naive_pooled_heatmaps(records, log, grid, pool, prefix):
    """method.md 2.6 with explicit loops: per cell, average the fused rows of the queries present (all of them
    where the block ran every query), sum the keys per cell, add I, row-normalise; a cell without a query keeps
    its previous row. Class-token start, vector form, bilinear upsampling, sum normalisation."""
    h, w = grid
    n_all = prefix + h * w
    cell = list(range(prefix)) + [prefix + (y // pool) * (w // pool) + x // pool for y in range(h) for x in range(w)]
    m = prefix + (h // pool) * (w // pool)
    buffers: dict[int, torch.Tensor] = {}
    heatmaps = []
    for rec, probs_by_block in zip(records, log, strict=True):
        for block, probs in probs_by_block.items():
            fused = rms(probs).tolist()
            batch = len(fused)
            buf = buffers.setdefault(block, torch.zeros(batch, m, m))
            for b in range(batch):
                queries = list(range(n_all)) if len(fused[b]) == n_all else kept_rows(rec, prefix, b)
                for c in range(m):
                    members = [r for r, token in enumerate(queries) if cell[token] == c]
                    if not members:
                        continue
                    row = [0.0] * m
                    for r in members:
                        for key in range(n_all):
                            row[cell[key]] += fused[b][r][key] / len(members)
                    row[c] += 1.0
                    buf[b, c] = torch.tensor(row) / sum(row)
        v = torch.zeros(batch, m)
        v[:, 0] = 1.0
        for block in sorted(buffers, reverse=True):
            v = torch.einsum("bi,bij->bj", v, buffers[block])
        cells = v[:, prefix:].reshape(batch, 1, h // pool, w // pool)
        up = F.interpolate(cells, size=(h, w), mode="bilinear", align_corners=False).flatten(1)
        heatmaps.append(up / up.sum(1, keepdim=True))
    return heatmaps


@pytest.mark.parametrize("reset", [0, 2], ids=["pruned", "reset"])
@pytest.mark.parametrize("variant", [{}, {"reg_tokens": 4}])
@pytest.mark.parametrize("task", [FeatureTask(dense=True), ClassificationTask()])
def test_pooled_rollout_matches_a_naive_per_query_reference(variant, task, reset):
    model = tiny_vit(**variant)
    config = MethodConfig(keep_ratio=0.25, reset_every=reset, rollout_pool=2, kv_reuse="on")
    records, log = run_logged(StreamingEngine(model, config, task), frames(3))
    assert [r.kind for r in records] == ["full", "pruned", "reset" if reset else "pruned"]
    assert records[2].pattern == (bool(reset) and not task.dense)  # classification resets with a fixed pattern
    prefix = model.num_prefix_tokens
    assert log[1][0].shape[2] == prefix + 16 and log[1][1].shape[2] == prefix + 4  # block 0 saw every query
    expected = naive_pooled_heatmaps(records, log, (4, 4), 2, prefix)
    for rec, heatmap in zip(records, expected, strict=True):
        assert torch.allclose(rec.heatmap, heatmap, atol=1e-6)


def test_kept_cells_of_later_blocks_average_only_their_kept_queries():
    """On a static video the cut block's pooled rows stay those of the full frame (all queries, same attention);
    a later block's row of a partly kept cell changes (fewer queries averaged)."""
    model = tiny_vit()
    config = MethodConfig(keep_ratio=0.25, reset_every=0, rollout_pool=2)
    engine = StreamingEngine(model, config, FeatureTask(dense=True))
    state, frame = engine.new_state(), frames(1)[0]
    engine.step(frame, state)
    before = {block: rows.clone() for block, rows in state.rows.items()}
    engine.step(frame, state)
    assert torch.allclose(state.rows[0], before[0], atol=1e-6)
    assert not torch.allclose(state.rows[2], before[2], atol=1e-4)


# -- prune_block ----------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("policy", ["dense", "rgtp"])
@pytest.mark.parametrize("task", [FeatureTask(), FeatureTask(dense=True)])
def test_prune_block_keeping_every_token_reproduces_forward_features(policy, task):
    model = tiny_vit(reg_tokens=4)
    clip = frames(3)
    config = MethodConfig(policy=policy, keep_ratio=1.0, prune_block=2)
    for frame, rec in zip(clip, StreamingEngine(model, config, task).run_clip(clip), strict=True):
        assert torch.allclose(rec.predictions, model.forward_features(frame), atol=1e-5)


def test_prune_block_moves_the_cut():
    model = tiny_vit(depth=4)
    engine = StreamingEngine(model, MethodConfig(keep_ratio=0.25, reset_every=0, prune_block=2), ClassificationTask())
    mlp_lengths = []
    mlp = engine.vit.mlp_residual
    engine.vit.mlp_residual = lambda blk, x: mlp_lengths.append(x.shape[1]) or mlp(blk, x)
    records, log = run_logged(engine, frames(2))
    assert {block: p.shape[2] for block, p in log[1].items()} == {0: 17, 1: 17, 2: 17, 3: 5}  # attention queries
    assert mlp_lengths == [17] * 4 + [17, 17, 5, 5]  # full frame, then the cut after block 2's attention
    assert records[1].predictions.shape == (2, 1000)


@pytest.mark.parametrize("prune_block", [0, 2])
@pytest.mark.parametrize("columns", ["cut", "keep"])
def test_shrinking_rollout_cuts_the_product_of_the_blocks_up_to_the_cut(prune_block, columns):
    model = tiny_vit(depth=4)
    config = MethodConfig(keep_ratio=0.25, reset_every=0, prune_block=prune_block, block0_columns=columns)
    records, log = run_logged(StreamingEngine(model, config, ClassificationTask()), frames(2))
    rec, probs = records[1], log[1]
    mats = {block: residual_normalize(rms(p)) for block, p in probs.items()}
    full = torch.eye(17).expand(2, 17, 17)
    for block in range(prune_block + 1):
        full = mats[block] @ full  # R = a_c ... a_0, [B, N', N']
    v = torch.zeros(2, 5)
    v[:, 0] = 1.0  # class-token start over the kept sequence
    for block in range(3, prune_block, -1):
        v = torch.einsum("bi,bij->bj", v, mats[block])
    seq = torch.cat([torch.zeros(2, 1, dtype=torch.long), rec.kept + 1], dim=1)
    rows = full.gather(1, seq[:, :, None].expand(-1, -1, 17))
    scores = torch.einsum("bi,bij->bj", v, rows)[:, 1:]  # every column: block0_columns=keep
    if columns == "keep":
        assert torch.allclose(rec.heatmap, scores / scores.sum(1, keepdim=True), atol=1e-6)
    else:  # columns cut: the kept patches' scores, up to the scale set by the nearest-kept fill
        got = rec.heatmap.gather(1, rec.kept)
        cut = torch.einsum("bi,bij->bj", v, rows.gather(2, seq[:, None, :].expand(-1, 5, -1)))[:, 1:]
        assert torch.allclose(got / got.sum(1, keepdim=True), cut / cut.sum(1, keepdim=True), atol=1e-6)


def test_cls_attn_scores_by_the_cut_blocks_attention():
    from tokbench.policies import cls_attn_scores, top_n

    model = tiny_vit()
    engine = StreamingEngine(model, MethodConfig(policy="cls-attn", keep_ratio=0.25, prune_block=1),
                             ClassificationTask())
    records, log = run_logged(engine, frames(2))
    assert torch.equal(records[1].kept, top_n(cls_attn_scores(log[1][1], 1, True), 4))


def test_prune_block_errors():
    with pytest.raises(ConfigError, match="prune_block 3 must be below the model's depth 3"):
        StreamingEngine(tiny_vit(), MethodConfig(prune_block=3), ClassificationTask())
    with pytest.raises(ConfigError, match="prune_block"):
        MethodConfig(prune_block=-1)
    with pytest.raises(ConfigError, match="cut=block0"):
        MethodConfig(prune_block=1, cut="input")


# -- track_features -------------------------------------------------------------------------------------------------


def mean_keys(model, frame, block):
    """timm's own forward up to ``block``; its head-averaged keys of the patch tokens ``[B, N, Ch]``."""
    with torch.no_grad():
        x = model.norm_pre(model._pos_embed(model.patch_embed(frame)))
        for blk in model.blocks[:block]:
            x = blk(x)
        attn = model.blocks[block].attn
        qkv = attn.qkv(model.blocks[block].norm1(x)).reshape(x.shape[0], x.shape[1], 3, attn.num_heads, -1)
        return qkv[:, model.num_prefix_tokens :, 1].mean(dim=2)


@pytest.mark.parametrize("features,prune_block", [("patch_embed", 0), ("block0_keys", 0), ("block0_keys", 1)])
def test_tracking_matches_the_chosen_features(features, prune_block):
    seen = []
    model, clip = tiny_vit(), frames(3)
    config = MethodConfig(keep_ratio=0.25, reset_every=0, track_features=features, prune_block=prune_block)
    engine = StreamingEngine(model, config, ClassificationTask())
    track = engine.ops.track_scores

    def spy(scores, prev, cur, *args, **kw):
        seen.append((prev.clone(), cur.clone()))
        return track(scores, prev, cur, *args, **kw)

    engine.ops.track_scores = spy
    engine.run_clip(clip)
    with torch.no_grad():
        expected = [model.patch_embed(f) if features == "patch_embed" else mean_keys(model, f, prune_block)
                    for f in clip]
    assert len(seen) == 2 and seen[0][0].shape == expected[0].shape
    for t, (prev, cur) in enumerate(seen, start=1):
        assert torch.allclose(prev, expected[t - 1], atol=1e-5) and torch.allclose(cur, expected[t], atol=1e-5)


def test_block0_keys_tracking_needs_a_block_before_the_cut():
    with pytest.raises(ConfigError, match="block0_keys"):
        MethodConfig(track_features="block0_keys", cut="input")
    with pytest.raises(ConfigError, match="track_features"):
        MethodConfig(track_features="embeddings")


# -- sdpa_flops -----------------------------------------------------------------------------------------------------


def test_sdpa_flops_explicit_runs_every_attention_as_matmuls():
    from tokbench.errors import TokbenchError
    from tokbench.flops import count_gmacs

    model = tiny_vit()
    for p in model.parameters():
        p.requires_grad_(False)
    frame = frames(1, b=1)[0]

    def count(sdpa_flops, sdpa):
        engine = StreamingEngine(model, MethodConfig(policy="dense", sdpa_flops=sdpa_flops), FeatureTask())
        return count_gmacs(lambda x: engine.step(x, engine.new_state()).predictions, (frame,), sdpa=sdpa)

    explicit = count("explicit", "explicit")  # raises if a fused SDPA call is traced
    assert explicit.gmacs == pytest.approx(count("handle", "handle").gmacs, rel=1e-9)
    with pytest.raises(TokbenchError, match="fused attention"):
        count("handle", "explicit")
    clip = frames(4)
    for policy in ("dense", "rgtp"):
        runs = [StreamingEngine(model, MethodConfig(policy=policy, keep_ratio=0.3, sdpa_flops=mode),
                                FeatureTask(dense=True)).run_clip(clip) for mode in ("handle", "explicit")]
        for a, b in zip(*runs, strict=True):
            assert torch.allclose(a.predictions, b.predictions, atol=1e-5)


# -- pruned_score_fill ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "task,options",
    [(FeatureTask(dense=True), {}), (FeatureTask(dense=True), {"rollout_pool": 2}),
     (ClassificationTask(), {"block0_columns": "keep"}), (ClassificationTask(), {"kv_reuse": "on"})],
)
def test_previous_fill_overwrites_the_pruned_positions_of_a_computed_heatmap(task, options):
    model, clip = tiny_vit(), frames(2)
    base = dict(keep_ratio=0.25, reset_every=0, rollout_norm="none", **options)
    computed = StreamingEngine(model, MethodConfig(**base), task).run_clip(clip)
    previous = StreamingEngine(model, MethodConfig(pruned_score_fill="previous", **base), task).run_clip(clip)
    assert torch.equal(previous[0].heatmap, computed[0].heatmap) and torch.equal(previous[1].kept, computed[1].kept)
    kept = computed[1].kept
    expected = computed[0].heatmap.clone().scatter_(1, kept, computed[1].heatmap.gather(1, kept))
    assert torch.allclose(previous[1].heatmap, expected, atol=1e-7)
    assert not torch.allclose(previous[1].heatmap, computed[1].heatmap, atol=1e-4)


@pytest.mark.parametrize(
    "task,options",
    [(FeatureTask(dense=True), {}), (ClassificationTask(), {"block0_columns": "keep"})],
)
def test_explicit_nearest_kept_fill_replaces_computed_scores_of_pruned_positions(task, options):
    from tokbench.rollout import nearest_kept_fill

    model, clip = tiny_vit(), frames(2)
    base = dict(keep_ratio=0.25, reset_every=0, rollout_norm="none", **options)
    computed = StreamingEngine(model, MethodConfig(**base), task).run_clip(clip)
    engine = StreamingEngine(model, MethodConfig(pruned_score_fill="nearest_kept", **base), task)
    assert engine.resolved.pruned_score_fill == "nearest_kept"
    state = engine.new_state()
    engine.step(clip[0], state)
    keys = []  # the cut block's keys of frame 1, as the engine matches them
    original = engine.vit.block0_keys
    engine.vit.block0_keys = lambda k: keys.append(original(k)) or keys[-1]
    matched = engine.step(clip[1], state)
    kept = computed[1].kept
    assert torch.equal(matched.kept, kept)
    expected = nearest_kept_fill(computed[1].heatmap.gather(1, kept), kept, keys[-1])
    assert torch.allclose(matched.heatmap, expected, atol=1e-7)
    assert not torch.allclose(matched.heatmap, computed[1].heatmap, atol=1e-4)


def test_computed_fill_is_refused_where_pruned_positions_get_no_computed_score():
    model = tiny_vit()
    for config, task in [
        (MethodConfig(pruned_score_fill="computed"), ClassificationTask()),
        (MethodConfig(pruned_score_fill="computed", kv_reuse="off"), FeatureTask(dense=True)),
        (MethodConfig(pruned_score_fill="computed", block0_columns="keep", cut="input"), ClassificationTask()),
    ]:
        with pytest.raises(ConfigError, match="pruned_score_fill=computed"):
            StreamingEngine(model, config, task)
    for config, task in [
        (MethodConfig(pruned_score_fill="computed", block0_columns="keep"), ClassificationTask()),
        (MethodConfig(pruned_score_fill="computed", kv_reuse="on"), ClassificationTask()),
        (MethodConfig(pruned_score_fill="computed"), FeatureTask(dense=True)),
    ]:
        assert StreamingEngine(model, config, task).resolved.pruned_score_fill == "computed"


# -- K/V reuse on classification ------------------------------------------------------------------------------------


@pytest.mark.parametrize("pool", [1, 2])
def test_kv_reuse_on_classification_is_exact_on_a_static_video(pool):
    model = tiny_vit(reg_tokens=4)
    frame = frames(1)[0]
    config = MethodConfig(keep_ratio=0.25, reset_every=0, kv_reuse="on", rollout_pool=pool)
    records = StreamingEngine(model, config, ClassificationTask()).run_clip([frame] * 3)
    with torch.no_grad():
        logits = model(frame)
    assert [r.num_kept for r in records] == [16, 4, 4]
    for rec in records:
        assert torch.allclose(rec.predictions, logits, atol=1e-5)
        assert torch.allclose(rec.heatmap.sum(1), torch.ones(2), atol=1e-6) and rec.degenerate_heatmaps == 0
        if pool == 1:  # kept rows equal the full frame's: the buffered rollout is unchanged
            assert torch.allclose(rec.heatmap, records[0].heatmap, atol=1e-6)


# -- frame records --------------------------------------------------------------------------------------------------


def test_frame_records_mark_pattern_frames():
    model, clip = tiny_vit(), frames(5)
    config = MethodConfig(keep_ratio=0.25, reset_every=2)
    cls = StreamingEngine(model, config, ClassificationTask()).run_clip(clip)
    assert [(r.kind, r.pattern) for r in cls] == [("full", False), ("pruned", False), ("reset", True),
                                                   ("pruned", False), ("reset", True)]
    dense = StreamingEngine(model, config, FeatureTask(dense=True)).run_clip(clip)
    full_resets = StreamingEngine(model, config.replace(reset_mode="full"), ClassificationTask()).run_clip(clip)
    assert not any(r.pattern for r in dense + full_resets)
