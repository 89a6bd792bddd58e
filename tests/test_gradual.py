"""Gradual drop schedules and per-block propagation (docs/method.md 7.1, 7.2; issue 16)."""

import pytest
import torch
from test_conformance_engine import frames, run_logged, tiny_vit
from test_windowed import _tiny_sam

from tokbench.config import MethodConfig, parse_set
from tokbench.engine import StreamingEngine
from tokbench.errors import ConfigError
from tokbench.gradual import first_drop, later_drop, propagate_step, transition
from tokbench.schedule import parse_schedule, solve_macs
from tokbench.tasks import ClassificationTask, FeatureTask

# -- parsing --------------------------------------------------------------------------------------------------------


def test_schedule_parses_to_block_order_and_a_canonical_spelling():
    assert parse_schedule("3:50, 0:300") == ((0, 300), (3, 50))
    assert parse_schedule("") == ()
    assert MethodConfig(drop_schedule=" 3:50,0:300").drop_schedule == "0:300,3:50"
    assert parse_set(["drop_schedule=0:300,3:50"]) == {"drop_schedule": "0:300,3:50"}


@pytest.mark.parametrize("text, match", [
    ("0-300", "BLOCK:COUNT"), ("0:x", "BLOCK:COUNT"), ("0:0", "counts >= 1"), ("-1:5", "blocks must be >= 0"),
    ("0:5,0:6", "names a block twice"),
])
def test_bad_schedules_are_one_line_errors(text, match):
    with pytest.raises(ConfigError, match=match) as err:
        MethodConfig(drop_schedule=text)
    assert "\n" not in str(err.value)


def test_configuration_errors_are_one_line():
    cases = [
        (dict(drop_schedule="1:4", prune_block=2), "prune_block is 2"),
        (dict(drop_schedule="0:4", cut="input"), "needs cut=block0"),
        (dict(propagation="supplement"), "at least two blocks"),
        (dict(drop_schedule="0:4", propagation="reference"), "at least two blocks"),
    ]
    for options, match in cases:
        with pytest.raises(ConfigError, match=match) as err:
            MethodConfig(**options)
        assert "\n" not in str(err.value)
    model = tiny_vit(depth=4)
    engine_cases = [
        (dict(drop_schedule="0:4,4:2"), "below the model's depth 4"),
        (dict(drop_schedule="0:10,2:6"), "drops 16 of 16"),
        (dict(policy="random", drop_schedule="0:4"), "random has no such scores"),
    ]
    for options, match in engine_cases:
        with pytest.raises(ConfigError, match=match) as err:
            StreamingEngine(model, MethodConfig(**options), ClassificationTask())
        assert "\n" not in str(err.value)


def test_windowed_models_supplement_skips_windowed_blocks_reference_refuses():
    model = _tiny_sam(80)  # blocks: windowed, global, windowed; 25 patches
    config = MethodConfig(keep_ratio=0.3, drop_schedule="0:10,2:5", propagation="supplement", reset_every=0)
    records = StreamingEngine(model, config, FeatureTask(dense=True)).run_clip(torch.randn(3, 1, 3, 80, 80))
    assert [r.block_tokens for r in records[1:]] == [[15, 15, 10]] * 2
    assert all(r.predictions.shape == (1, 25, 32) for r in records)
    with pytest.raises(ConfigError, match="windowed blocks") as err:
        StreamingEngine(model, config.replace(propagation="reference"), FeatureTask(dense=True))
    assert "\n" not in str(err.value)


# -- known answers: the propagation solves ---------------------------------------------------------------------------


def test_supplement_propagation_two_blocks_known_answer():
    """a1 = [[.6, .4], [.2, .8]], a2 = [[.5, .5], [0, 1]], s_0 = [.8, .2]:
    a1^T s_1 = s_0 gives s_1 = [1.5, -0.5]; a2^T s_2 = s_1 gives s_2 = [3, -2]; and s_0 = (a2 a1)^T s_2."""
    a1 = torch.tensor([[[0.6, 0.4], [0.2, 0.8]]])
    a2 = torch.tensor([[[0.5, 0.5], [0.0, 1.0]]])
    s0 = torch.tensor([[0.8, 0.2]])
    s1, bad1 = propagate_step(a1, s0, "supplement")
    s2, bad2 = propagate_step(a2, s1, "supplement")
    assert (bad1, bad2) == (0, 0) and s2.dtype == torch.float64
    assert torch.allclose(s1, torch.tensor([[1.5, -0.5]], dtype=torch.float64))
    assert torch.allclose(s2, torch.tensor([[3.0, -2.0]], dtype=torch.float64))
    cumulative = (a2 @ a1).to(torch.float64)  # A_(2,1) = a2 a1
    assert torch.allclose(cumulative.transpose(1, 2) @ s2[..., None], s0.to(torch.float64)[..., None])


def test_reference_propagation_two_blocks_known_answer():
    """Raw attention, not transposed, renormalised per block: A1 = [[.6, .4], [.2, .8]], s = [.8, .2] gives
    [1.4, -0.1] / 1.3 = [14/13, -1/13]; A2 = [[.5, .5], [0, 1]] then gives [29/13, -1/13] / (28/13) = [29/28, -1/28]."""
    a1 = torch.tensor([[[0.6, 0.4], [0.2, 0.8]]])
    a2 = torch.tensor([[[0.5, 0.5], [0.0, 1.0]]])
    s1, _ = propagate_step(a1, torch.tensor([[0.8, 0.2]]), "reference")
    s2, _ = propagate_step(a2, s1, "reference")
    assert torch.allclose(s1, torch.tensor([[14 / 13, -1 / 13]], dtype=torch.float64))
    assert torch.allclose(s2, torch.tensor([[29 / 28, -1 / 28]], dtype=torch.float64))


def test_singular_systems_carry_scores_on():
    singular = torch.tensor([[[1.0, 1.0], [1.0, 1.0]], [[2.0, 0.0], [0.0, 4.0]]])
    scores = torch.tensor([[0.3, 0.7], [0.4, 0.4]])
    out, bad = propagate_step(singular, scores, "supplement")
    assert bad == 1
    assert torch.equal(out[0], scores[0].double())
    assert torch.allclose(out[1], torch.tensor([0.2, 0.1], dtype=torch.float64))


def test_solve_macs():
    assert solve_macs(3) == 9 + 9
    assert solve_macs(100) == 333_333 + 10_000


def test_transition_forms():
    """supplement: the rollout's rownorm(A + I) over the sequence; reference: the raw fused attention; prefix
    rows and columns removed; with K/V reuse the columns outside the sequence are left out."""
    probs = torch.softmax(torch.randn(1, 2, 3, 5), dim=-1)  # 3 queries (1 prefix + 2 patches) over 5 keys
    seq = torch.tensor([[0, 2, 4]])
    raw = probs.square().mean(1).sqrt()
    ref = transition(probs, seq, 1, "reference")
    assert torch.allclose(ref, raw[:, 1:][:, :, [2, 4]])
    sup = transition(probs, seq, 1, "supplement")
    full = raw.clone()
    full[0, torch.arange(3), seq[0]] += 1
    full = full / full.sum(-1, keepdim=True)
    assert torch.allclose(sup, full[:, 1:][:, :, [2, 4]], atol=1e-6)


# -- the drops ------------------------------------------------------------------------------------------------------


def test_first_drop_forces_the_one_shot_set_and_keeps_the_best_others():
    scores = torch.tensor([[0.1, 0.5, 0.05, 0.2, 0.15]])
    force = torch.tensor([[2]])  # a background sample with a low score
    kept, rank = first_drop(scores, force, count=2)
    assert kept.tolist() == [[1, 2, 3]]  # 2 forced, then the two best: 1 (0.5), 3 (0.2)
    assert rank.tolist() == [[1, 0, 2]]


def test_later_drop_by_rank_or_by_propagated_score():
    rank = torch.tensor([[2, 0, 3, 1]])
    assert later_drop(rank, 1).tolist() == [[0, 1, 3]]  # the last in rank order (position 2) goes
    scores = torch.tensor([[0.4, 0.1, 0.3, 0.1]], dtype=torch.float64)
    assert later_drop(rank, 2, scores).tolist() == [[0, 2]]  # the two lowest (a tie: rank decides both go)


@pytest.mark.parametrize("task", [ClassificationTask(), FeatureTask(dense=True)])
@pytest.mark.parametrize("propagation", ["none", "supplement", "reference"])
def test_schedule_drops_the_scheduled_counts_at_the_scheduled_blocks(task, propagation):
    model = tiny_vit(depth=4)  # 16 patches + a class token
    config = MethodConfig(keep_ratio=0.25, reset_every=0, drop_schedule="0:8,2:4", propagation=propagation)
    mlp_lengths = []
    engine = StreamingEngine(model, config, task)
    mlp = engine.vit.mlp_residual
    engine.vit.mlp_residual = lambda blk, x: mlp_lengths.append(x.shape[1]) or mlp(blk, x)
    records, log = run_logged(engine, frames(3))
    assert mlp_lengths == [17] * 4 + [9, 9, 5, 5] * 2  # full frame, then two pruned frames
    keys = 17 if task.dense else None  # K/V reuse: every query sees all N' buffered keys
    assert {b: tuple(p.shape[2:]) for b, p in log[1].items()} == {
        0: (17, 17), 1: (9, keys or 9), 2: (9, keys or 9), 3: (5, keys or 5)}
    for rec in records[1:]:
        assert rec.block_tokens == [8, 8, 4, 4] and rec.num_kept == 8
        assert set(rec.kept_last[0].tolist()) <= set(rec.kept[0].tolist())
        assert rec.heatmap.shape == (2, 16) and torch.isfinite(rec.heatmap).all()
        assert torch.allclose(rec.heatmap.sum(1), torch.ones(2))


def test_propagated_scores_choose_the_later_drop():
    """Re-derive block 2's drop by hand: s_0 = the tracked scores of the first cut's survivors, one supplement
    solve per block (1, then 2) on the logged attention, then the 4 lowest of 8 go."""
    model = tiny_vit(depth=4)
    config = MethodConfig(keep_ratio=0.25, reset_every=0, window=0, drop_schedule="0:8,2:4",
                          propagation="supplement")
    records, log = run_logged(StreamingEngine(model, config, ClassificationTask()), frames(2))
    rec = records[1]
    s = records[0].heatmap.gather(1, rec.kept).double()  # r = 0: the tracked scores are the previous heatmap
    seq = torch.cat([torch.zeros(2, 1, dtype=torch.long), rec.kept + 1], dim=1)
    for block in (1, 2):
        a = transition(log[1][block], None, 1, "supplement").double()
        s = torch.linalg.solve(a.transpose(1, 2), s[..., None])[..., 0]
    expect = rec.kept.gather(1, s.argsort(dim=1, descending=True, stable=True)[:, :4]).sort(1).values
    assert torch.equal(rec.kept_last, expect)
    assert seq.shape == (2, 9)


@pytest.mark.parametrize("task", [ClassificationTask(), FeatureTask(dense=True)])
def test_one_entry_schedule_equals_one_shot_pruning(task):
    """``0:K`` alone keeps the top N - K: with phi = 1, beta = 0 and a force-keep set inside that top, it equals
    one-shot pruning to N - K tokens (keep sets, predictions and heatmaps)."""
    model = tiny_vit(depth=3)
    gradual = StreamingEngine(model, MethodConfig(keep_ratio=0.25, drop_schedule="0:6", reset_every=4), task)
    one_shot = StreamingEngine(model, MethodConfig(keep_ratio=10 / 16, reset_every=4), task)
    clip = frames(6)
    for a, b in zip(gradual.run_clip(clip), one_shot.run_clip(clip), strict=True):
        assert a.num_kept == b.num_kept and a.kind == b.kind
        assert (a.kept is None and b.kept is None) or torch.equal(a.kept, b.kept)
        assert torch.equal(a.predictions, b.predictions)
        assert torch.equal(a.heatmap, b.heatmap)


def test_extremes_n_minus_one_and_background_samples():
    model = tiny_vit(depth=3)
    clip = frames(3)
    one = StreamingEngine(model, MethodConfig(drop_schedule="0:1", reset_every=0), ClassificationTask())
    assert [r.num_kept for r in one.run_clip(clip)] == [16, 15, 15]
    last = StreamingEngine(model, MethodConfig(drop_schedule="0:14,1:1", reset_every=0, propagation="reference"),
                           FeatureTask(dense=True))
    assert [r.block_tokens for r in last.run_clip(clip)][1:] == [[2, 1, 1]] * 2
    # beta > 0: the force-keep set holds background samples, which the first drop keeps over better patches
    bg = StreamingEngine(model, MethodConfig(keep_ratio=0.25, bg_ratio=0.25, drop_schedule="0:9", reset_every=0),
                         ClassificationTask())
    assert [r.num_kept for r in bg.run_clip(clip)] == [16, 7, 7]


# -- result folders from before the schedule options keep resuming ------------------------------------------------


def test_one_shot_rows_keep_the_config_ids_they_had_before_the_schedule_options():
    """A configuration without a schedule is named as before ``drop_schedule`` / ``propagation`` existed: the ids
    of the committed ``results/action`` rows (written by the previous version) are what ``resolve`` gives now."""
    import csv
    from pathlib import Path

    from tokbench.ablate import AblationSpec, expand
    from tokbench.experiment import row_columns
    from tokbench.jobs import resolve
    from tokbench.models.zoo import load_model

    committed = list(csv.DictReader((Path(__file__).parents[1] / "results/action/rows.csv").open()))
    assert "drop_schedule" not in committed[0]  # written before the option existed
    loaded = load_model("synthaction-vivit")
    spec = AblationSpec(task="action", clips=int(committed[0]["clips"]),
                        knobs={"window": [0, 1, 2, 3], "keep_ratio": [0.25]})
    jobs = [resolve(loaded, c, 1, row_columns(loaded, spec)) for c in expand(spec, loaded.kind)]
    assert {j.config_id for j in jobs} == {r["config_id"] for r in committed}
    scheduled = resolve(loaded, MethodConfig(drop_schedule="0:40,2:10"), 1, row_columns(loaded, spec))
    assert scheduled.identity["drop_schedule"] == "0:40,2:10" and "propagation" not in scheduled.identity
    solved = resolve(loaded, MethodConfig(drop_schedule="0:40,2:10", propagation="supplement"), 1,
                     row_columns(loaded, spec))
    assert solved.identity["propagation"] == "supplement" and solved.config_id != scheduled.config_id
