"""Baseline keep-set policies: exact budgets, determinism, and known answers for each scoring rule."""

import pytest
import timm
import torch

from tokbench.config import MethodConfig
from tokbench.engine import StreamingEngine
from tokbench.errors import ConfigError
from tokbench.models.detector import DetectionTask, DetectorSpec, ViTDetector
from tokbench.policies import (
    BASELINES,
    POLICIES,
    Need,
    boxmask_scores,
    cls_attn_scores,
    eventful_scores,
    grid_indices,
    policy,
    top_n,
)
from tokbench.selection import kept_count
from tokbench.tasks import ClassificationTask


def tiny_vit(**kw):
    return timm.create_model("vit_tiny_patch16_224", pretrained=False, img_size=64, depth=2, **kw).eval()


def clip(t=6, b=2, seed=0):
    gen = torch.Generator().manual_seed(seed)
    return [torch.randn(b, 3, 64, 64, generator=gen) for _ in range(t)]


def test_top_n_breaks_ties_by_raster_index():
    scores = torch.tensor([[0.1, 0.5, 0.5, 0.9, 0.5]])
    assert top_n(scores, 3).tolist() == [[1, 2, 3]]


def test_grid_indices_spread_evenly_over_the_frame():
    idx = grid_indices((20, 20), 100)
    assert idx.unique().numel() == 100
    rows, cols = idx // 20, idx % 20
    quadrants = torch.bincount((rows >= 10).long() * 2 + (cols >= 10).long(), minlength=4)
    assert quadrants.tolist() == [25, 25, 25, 25]
    assert grid_indices((4, 4), 16).tolist() == list(range(16))


def test_cls_attn_scores_with_and_without_class_token():
    probs = torch.zeros(1, 2, 3, 3)  # one prefix token, two patches
    probs[:, 0, 0] = torch.tensor([0.2, 0.7, 0.1])
    probs[:, 1, 0] = torch.tensor([0.2, 0.3, 0.5])
    assert torch.allclose(cls_attn_scores(probs, 1, True), torch.tensor([[0.5, 0.3]]))
    received = torch.full((1, 1, 2, 2), 0.5)
    received[0, 0, :, 0] = torch.tensor([0.9, 0.7])
    assert torch.allclose(cls_attn_scores(received, 0, False), torch.tensor([[0.4, 0.25]]) * 2)


def test_eventful_scores_are_embedding_change():
    ref = torch.zeros(1, 3, 2)
    z = torch.tensor([[[3.0, 4.0], [0.0, 0.0], [1.0, 0.0]]])
    assert eventful_scores(z, ref).tolist() == [[5.0, 0.0, 1.0]]


def test_boxmask_keeps_boxes_then_their_ring_then_the_grid():
    anchors = torch.zeros(1, 16)
    anchors[0, 5] = 1.0  # patch (1, 1) of a 4 x 4 grid
    assert top_n(boxmask_scores(anchors, (4, 4), 1), 1).tolist() == [[5]]
    ring = {0, 1, 2, 4, 6, 8, 9, 10}
    kept = set(top_n(boxmask_scores(anchors, (4, 4), 9), 9)[0].tolist())
    assert kept == ring | {5}
    empty = boxmask_scores(torch.zeros(1, 16), (4, 4), 4)
    assert top_n(empty, 4)[0].tolist() == grid_indices((4, 4), 4).tolist()


def run(policy, model, task, seed=0, reset=4, frames=None):
    config = MethodConfig(policy=policy, keep_ratio=0.25, reset_every=reset, seed=seed)
    return StreamingEngine(model, config, task).run_clip(frames or clip())


@pytest.mark.parametrize("policy", [p for p in BASELINES if p != "boxmask"])
def test_every_baseline_keeps_exactly_the_budget_on_the_rgtp_schedule(policy):
    model = tiny_vit()
    records = run(policy, model, ClassificationTask())
    budget = kept_count(16, 0.25)
    reset = kept_count(16, 1.0) // 2  # classification resets keep the 1-in-2 pattern
    assert [r.num_kept for r in records] == [16, budget, budget, budget, reset, budget]
    for rec in records[1:]:
        if rec.kept is not None:
            assert all(row.unique().numel() == row.numel() for row in rec.kept)
    again = run(policy, model, ClassificationTask())
    assert all(torch.equal(a.predictions, b.predictions) for a, b in zip(records, again, strict=True))


def test_random_policy_depends_on_the_seed_only():
    model = tiny_vit()
    kept = {seed: [r.kept for r in run("random", model, ClassificationTask(), seed)[1:4]] for seed in (0, 1)}
    again = [r.kept for r in run("random", model, ClassificationTask(), 0)[1:4]]
    assert all(torch.equal(x, y) for x, y in zip(kept[0], again, strict=True))
    assert any(not torch.equal(x, y) for x, y in zip(kept[0], kept[1], strict=True))


def test_eventful_keeps_the_patch_that_changed():
    model = tiny_vit()
    still = torch.randn(1, 3, 64, 64)
    moved = still.clone()
    moved[:, :, 32:48, 16:32] += 3.0  # patch (2, 1) -> index 9
    config = MethodConfig(policy="eventful", keep_ratio=1 / 16, reset_every=0)
    records = StreamingEngine(model, config, ClassificationTask()).run_clip([still, moved])
    assert records[1].kept.tolist() == [[9]]


def test_boxmask_on_the_detector_keeps_the_budget():
    model = ViTDetector(DetectorSpec(img_size=64, depth=2, embed_dim=64, num_heads=2, head_dim=32)).eval()
    records = run("boxmask", model.backbone, DetectionTask(model, score_thr=0.0), frames=clip(b=1))
    assert [r.num_kept for r in records] == [16, 4, 4, 4, 16, 4]


def test_policies_that_cannot_apply_are_refused():
    with pytest.raises(ConfigError, match="boxmask"):
        run("boxmask", tiny_vit(), ClassificationTask())
    with pytest.raises(ConfigError, match="cut=block0"):
        StreamingEngine(tiny_vit(), MethodConfig(policy="cls-attn", cut="input"), ClassificationTask())


# -- the registry ---------------------------------------------------------------------------------------------------


def test_unknown_policy_is_a_one_line_error_with_close_matches():
    with pytest.raises(ConfigError, match="unknown policy 'evntful'; did you mean 'eventful'") as err:
        policy("evntful")
    assert "\n" not in str(err.value)
    assert policy("grid") is POLICIES["grid"]


def test_each_policy_declares_what_it_needs_keeps_and_where_it_applies():
    needs = {name: p.needs for name, p in POLICIES.items()}
    assert needs == {"rgtp": {Need.ROLLOUT}, "dense": set(), "random": set(), "grid": set(),
                     "cls-attn": {Need.PROBS}, "eventful": set(), "boxmask": {Need.BOXES}}
    assert [n for n, p in POLICIES.items() if p.remember is not None] == ["eventful", "boxmask"]
    assert [n for n, p in POLICIES.items() if not p.prunes] == ["dense"]
    assert {n: p.seeds for n, p in POLICIES.items() if p.seeds > 1} == {"random": 3}
    assert [n for n, p in POLICIES.items() if p.kv_reuse] == ["eventful"]
    assert [n for n, p in POLICIES.items() if not p.applies_to("action")] == ["boxmask"]
    assert all(p.applies_to("detect") for p in POLICIES.values())
    assert BASELINES == ("random", "grid", "cls-attn", "eventful", "boxmask")
    assert len({p.color for p in POLICIES.values()}) == len({p.marker for p in POLICIES.values()}) == len(POLICIES)


def test_the_registry_drives_config_ablation_and_report():
    from tokbench.ablate import AblationSpec, expand
    from tokbench.config import MethodConfig
    from tokbench.report import POLICY_COLORS, POLICY_ORDER

    for task, kind in [("detect", None), ("action", None), ("detect", "classify")]:
        names = [c.policy for c in expand(AblationSpec(task=task, knobs={"window": [1]}), kind)]
        applies = [n for n, p in POLICIES.items() if p.applies_to(kind or task)]
        expected = ["dense"] + [n for n in applies if n != "dense" for _ in range(POLICIES[n].seeds)]
        assert names == expected
    assert MethodConfig(policy="eventful").resolve(dense=False).kv_reuse == "on"
    assert POLICY_ORDER[0] == "dense" and set(POLICY_ORDER) == set(POLICIES)
    assert POLICY_COLORS["rgtp"] == "tab:blue" and POLICY_COLORS["boxmask"] == "tab:red"
