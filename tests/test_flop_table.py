"""``tokbench flops`` rows (flop_table): the unit decided by the model's task, per-clip classification costs,
one row per option value, ``window_queries``, ``sdpa_flops`` and the row schema (method.md 8.1, 8.3, 11)."""

from __future__ import annotations

import itertools
import json

import pytest
import torch

import tokbench  # noqa: F401  (installs the torchvision shim before timm is imported)
from tokbench import flop_table
from tokbench.config import MethodConfig
from tokbench.flops import count_gmacs
from tokbench.flops_ref import ViTArch, linear_macs, ref_frame_gmacs, temporal_head_gmacs
from tokbench.frame_flops import frame_costs
from tokbench.models.action import ActionSpec, ViViTFactorised
from tokbench.models.zoo import LoadedModel, wrap_model

timm = pytest.importorskip("timm")

TINY = ["--model", "vit_tiny_patch16_224", "--img-size", "64"]
VITDET = ["flops", "--model", "vitdet_b", "--img-size", "672", "--keep", "196", "--preset", "reference",
          "--convention", "paper", "--format", "json"]


def _json(result) -> list[dict]:
    code, out, err = result
    assert code == 0, err
    return json.loads(out)


@pytest.fixture(scope="module")
def tiny_action() -> LoadedModel:
    """A 2-block spatial ViT (C = 32, 2 heads, 4 x 4 grid + CLS), a 1-block temporal encoder over 4 steps, 5 classes."""
    torch.manual_seed(0)
    spec = ActionSpec(num_classes=5, num_frames=4, img_size=64, embed_dim=32, depth=2, num_heads=2, temporal_depth=1)
    return wrap_model("tiny-action", ViViTFactorised(spec))


@pytest.fixture(scope="module")
def tiny_vit() -> LoadedModel:
    """A 2-block timm classifier (C = 192, 3 heads, 4 x 4 grid + CLS, 1000 classes)."""
    torch.manual_seed(0)
    model = timm.create_model("vit_tiny_patch16_224", pretrained=False, img_size=64, depth=2).eval()
    return LoadedModel("tiny-vit", "classify", model, model, (64, 64))


@pytest.fixture(scope="module")
def tiny_sam() -> LoadedModel:
    """A windowed ViTDet-style backbone (5 x 5 grid padded to 6 x 6 windows of 2, block 1 global), as features."""
    from tokbench.vit_windowed import VisionTransformerSAM

    torch.manual_seed(0)
    model = VisionTransformerSAM(img_size=80, patch_size=16, embed_dim=32, depth=3, num_heads=2, window_size=2,
                                 global_attn_indexes=(1,), use_rel_pos=True, neck_chans=0, num_classes=0).eval()
    return LoadedModel("tiny-sam", "features", model, model, (80, 80))


SPATIAL = ViTArch(depth=2, dim=32, heads=2, mlp_dim=128, grid=(4, 4), prefix=1)
TEMPORAL = ViTArch(depth=1, dim=32, heads=2, mlp_dim=128, grid=(1, 4), prefix=1)


# ------------------------------------------------------------------------------------------- done-when (issue 12)


def test_vitdet_b_window_list_gives_one_row_per_value(run_cli):
    rows = _json(run_cli(*VITDET, "--window", "0", "1", "2", "3", "--full-fraction", "0.12653"))
    dense, *rgtp = rows
    assert [r["policy"] for r in rows] == ["dense"] + ["rgtp"] * 4
    assert [r["window"] for r in rgtp] == [0, 1, 2, 3]
    assert [round(r["gmacs_per_frame"], 2) for r in rgtp] == [46.77, 46.78, 46.80, 46.82]
    assert round(dense["gmacs_per_frame"], 2) == 174.50
    assert {(round(r["gmacs_full"], 2), round(r["gmacs_reset"], 2)) for r in rgtp} == {(174.84, 174.84)}
    assert round(rgtp[1]["gmacs_pruned"], 2) == 28.23
    assert all(r["unit"] == "frame" and r["convention"] == "paper" and r["error"] == "" for r in rows)
    assert all("gmacs" not in r and "gmacs_per_clip" not in r for r in rows)
    assert {r["frac_full_frames"] for r in rgtp} == {0.12653} and {r["frac_pattern_frames"] for r in rgtp} == {0}
    assert {r["rollout_pool"] for r in rgtp} == {2} and {r["kv_reuse"] for r in rgtp} == {"on"}


def test_vitdet_b_schedule_average_without_full_fraction(run_cli):
    (dense, row) = _json(run_cli(*VITDET, "--window", "1", "--frames", "16"))
    assert row["frac_full_frames"] == 2 / 16  # t = 0 and the full reset at t = 8
    expected = (2 * row["gmacs_full"] + 14 * row["gmacs_pruned"]) / 16
    assert row["gmacs_per_frame"] == pytest.approx(expected, abs=1e-4)
    assert row["kept_tokens_mean"] == pytest.approx((2 * 1764 + 14 * 196) / 16)
    assert row["overhead_gmacs_tracking"] == pytest.approx(14 / 16 * 1764 * 9 * 768 / 1e9)


# --------------------------------------------------------------------------------------- unit from the model's task


def test_unit_of_follows_the_task():
    assert [flop_table.unit_of(k) for k in ("detect", "features", "action", "classify")] == [
        "frame", "frame", "clip", "clip"]
    assert flop_table.default_views("vivit_b_k400") == 12 and flop_table.default_views("synthaction-vivit") == 1


def test_shipped_action_model_is_counted_as_classification(run_cli):
    dense, row = _json(run_cli("flops", "--model", "synthaction-vivit", "--keep", "0.25", "--convention", "paper",
                               "--format", "json"))
    assert row["unit"] == "clip" and row["kind"] == "action" and "gmacs_per_frame" not in row
    assert (row["kv_reuse"], row["reset_mode"], row["pruned_score_fill"]) == ("off", "pattern", "nearest_kept")
    assert row["frames_per_clip"] == 16 and row["views"] == 1
    assert row["frac_full_frames"] == 1 / 16 and row["frac_pattern_frames"] == 1 / 16
    assert row["overhead_gmacs_match"] > 0 and row["gmacs_temporal_head"] > 0
    assert row["gmacs_reset"] is None and row["gmacs_pattern"] < row["gmacs_full"]
    assert dense["gmacs_per_clip"] > row["gmacs_per_clip"]


def test_paper_clip_of_an_action_model_in_closed_form(tiny_action):
    model = flop_table.paper_model("tiny-action", loaded=tiny_action)
    assert (model.spatial, model.temporal, model.num_classes, model.steps) == (SPATIAL, TEMPORAL, 5, 4)
    _, row = flop_table.paper_rows(model, [0.25], base=MethodConfig(reset_every=2), views=3)
    kw = {"kv_reuse": False, "rollout_form": "vector", "score_fill": "nearest_kept"}
    full = ref_frame_gmacs(SPATIAL, "full", rollout_form="vector", kv_reuse=False)
    pruned = ref_frame_gmacs(SPATIAL, "pruned", keep_tokens=4, track_radius=1, **kw)
    pattern = ref_frame_gmacs(SPATIAL, "pattern", keep_tokens=8, **kw)  # 1in2 of 4 x 4
    head = temporal_head_gmacs(TEMPORAL, 5)
    steps = full["gmacs"] + pattern["gmacs"] + 2 * pruned["gmacs"]  # t = 0 full, 2 pattern, 1 and 3 pruned
    assert row["gmacs_per_clip"] == pytest.approx(3 * (steps + head), abs=1e-5)
    assert row["overhead_gmacs_match"] * 1e9 == pytest.approx(3 * (2 * 12 * 4 * 16 + 8 * 8 * 16))
    assert row["overhead_gmacs_tracking"] * 1e9 == pytest.approx(3 * 2 * 16 * 9 * 32)
    assert row["kept_tokens_mean"] == (16 + 8 + 4 + 4) / 4


def test_fvcore_clip_traces_the_temporal_encoder(tiny_action):
    base = MethodConfig(reset_every=2)
    dense, row = flop_table.flop_rows(tiny_action, [0.25], base=base, views=3)
    head = count_gmacs(tiny_action.model.temporal, torch.zeros(1, 4, 32)).gmacs
    assert head > 0 and row["gmacs_temporal_head"] == pytest.approx(head, abs=1e-5)
    steps = row["gmacs_full"] + row["gmacs_pattern"] + 2 * row["gmacs_pruned"]
    assert row["gmacs_per_clip"] == pytest.approx(3 * (steps + head), abs=1e-4)
    assert dense["gmacs_per_clip"] == pytest.approx(3 * (4 * dense["gmacs_full"] + head), abs=1e-4)
    # the engine's nearest-kept matching (all N patches x n kept, C_h) is traced, and reported on its own line
    config = base.replace(keep_ratio=0.25).resolve(False)
    costs = frame_costs(tiny_action.engine(config), flop_table._input_frame(tiny_action))
    assert costs["pruned"].by_operator["einsum"] * 1e9 == pytest.approx(16 * 4 * 16)
    assert row["overhead_gmacs_match"] * 1e9 == pytest.approx(3 * (2 * 16 * 4 * 16 + 16 * 8 * 16))
    counts = flop_table.step_counts(4, 2, "pattern")
    clip = flop_table.clip_unit_gmacs(tiny_action, costs, {"full": 1, "reset": 1, "pruned": 2}, views=3)
    assert counts == {"full": 1, "reset": 0, "pattern": 1, "pruned": 2}
    assert clip == pytest.approx(row["gmacs_per_clip"], abs=1e-4)


def test_timm_classifier_counts_its_head_per_step():
    from tokbench.models.zoo import load_model

    loaded = load_model("vit_tiny_patch16_224", img_size=64)
    model = flop_table.paper_model(loaded.name, loaded=loaded)
    assert model.kind == "classify" and model.num_classes == 1000 and model.temporal is None
    dense, row = flop_table.paper_rows(model, [0.25], base=MethodConfig(), frames=8)
    arch = ViTArch(depth=12, dim=192, heads=3, mlp_dim=768, grid=(4, 4), prefix=1)
    classifier = linear_macs(192, 1000) / 1e9
    assert dense["gmacs_full"] == pytest.approx(ref_frame_gmacs(arch, "dense")["gmacs"] + classifier, abs=1e-5)
    assert dense["gmacs_per_clip"] == pytest.approx(8 * dense["gmacs_full"], abs=1e-4)
    assert row["gmacs_temporal_head"] is None and row["unit"] == "clip"


def test_vivit_b_views(run_cli):
    common = ["flops", "--model", "vivit_b_k400", "--keep", "0.25", "--convention", "paper", "--format", "json"]
    twelve = _json(run_cli(*common))
    one = _json(run_cli(*common, "--views", "1"))
    assert twelve[1]["views"] == 12 and one[1]["views"] == 1
    assert twelve[1]["gmacs_per_clip"] == pytest.approx(12 * one[1]["gmacs_per_clip"], rel=1e-5)
    assert twelve[1]["frames_per_clip"] == 16 and twelve[1]["reset_mode"] == "pattern"


# -------------------------------------------------------------------------------------- lists, --set, schema


def test_every_list_option_gives_one_row_per_combination(run_cli):
    rows = _json(run_cli("flops", *TINY, "--keep", "0.25", "0.5", "--window", "0", "2", "--reset", "0", "4",
                         "--frames", "8", "--convention", "paper", "--format", "json"))
    got = [(r["keep_ratio"], r["window"], r["reset_every"]) for r in rows[1:]]
    assert got == list(itertools.product([0.25, 0.5], [0, 2], [0, 4]))
    assert len({r["config_id"] for r in rows}) == len(rows)
    assert all(v != "auto" for r in rows for v in r.values())
    never = rows[1]
    assert never["frac_pattern_frames"] == 0 and never["gmacs_pattern"] is None
    assert rows[2]["frac_pattern_frames"] == 1 / 8  # k = 4 over 8 steps: one pattern reset


def test_set_overrides_reach_the_rows(run_cli):
    rows = _json(run_cli("flops", *TINY, "--keep", "0.25", "--frames", "8", "--reset", "4", "--set",
                         "reset_mode=full", "--set", "rollout_form=matrix", "--convention", "paper", "--format",
                         "json"))
    row = rows[1]
    assert (row["reset_mode"], row["rollout_form"]) == ("full", "matrix")
    assert row["frac_full_frames"] == 2 / 8 and row["gmacs_pattern"] is None
    assert row["gmacs_reset"] == pytest.approx(row["gmacs_full"], abs=1e-5)


def test_a_failing_configuration_becomes_a_row(run_cli):
    rows = _json(run_cli(*VITDET, "--set", "kv_reuse=off"))
    assert rows[0]["error"] == "" and round(rows[0]["gmacs_per_frame"], 2) == 174.50
    assert "kv_reuse" in rows[1]["error"] and "gmacs_per_frame" not in rows[1]


def test_full_fraction_is_for_frame_rows_only(run_cli):
    code, _, err = run_cli("flops", "--model", "vivit_b_k400", "--convention", "paper", "--full-fraction", "0.1")
    assert code == 1 and "per-frame" in err


# ------------------------------------------------------------------------------------ window_queries, sdpa_flops


def test_window_queries_kept_costs_less_on_a_windowed_model(tiny_sam):
    model = flop_table.paper_model("tiny-sam", loaded=tiny_sam)
    assert model.spatial.window_size == 2 and model.spatial.global_blocks == (1,) and model.spatial.rel_pos
    base = MethodConfig(reset_every=4)
    paper = {q: flop_table.paper_rows(model, [0.25], base=base.replace(window_queries=q), frames=8)[1]
             for q in ("all", "kept")}
    assert paper["kept"]["gmacs_pruned"] < paper["all"]["gmacs_pruned"]
    assert paper["kept"]["window_queries"] == "kept" and paper["kept"]["unit"] == "frame"
    assert paper["kept"]["gmacs_full"] == paper["all"]["gmacs_full"]
    fvcore = {q: flop_table.flop_rows(tiny_sam, [0.25], base=base.replace(window_queries=q), frames=8)[1]
              for q in ("all", "kept")}
    assert fvcore["all"]["error"] == "" and fvcore["kept"]["error"] == ""
    assert fvcore["kept"]["gmacs_pruned"] < fvcore["all"]["gmacs_pruned"]
    assert fvcore["all"]["reset_mode"] == "full" and fvcore["all"]["kv_reuse"] == "on"


NUMBERS = ("gmacs_per_clip", "gmacs_full", "gmacs_pattern", "gmacs_pruned", "gmacs_temporal_head",
           "overhead_gmacs_rollout", "overhead_gmacs_match")


@pytest.mark.parametrize("which", ["timm", "action"])
def test_explicit_attention_counts_what_the_sdpa_handle_counts(which, tiny_vit, tiny_action):
    loaded = tiny_vit if which == "timm" else tiny_action
    rows = {m: flop_table.flop_rows(loaded, [0.25], base=MethodConfig(reset_every=2, sdpa_flops=m), frames=4)
            for m in ("handle", "explicit")}
    for handle, explicit in zip(rows["handle"], rows["explicit"], strict=True):
        assert (handle["sdpa_flops"], explicit["sdpa_flops"]) == ("handle", "explicit")
        assert explicit["error"] == "", explicit["error"]
        for key in NUMBERS:
            if handle.get(key) is not None:
                assert explicit[key] == pytest.approx(handle[key], abs=1e-6), key
