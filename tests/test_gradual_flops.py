"""FLOPs of gradual token dropping (``drop_schedule``) and score propagation (``propagation``) in both conventions,
against hand sums (method.md 7.1, 7.2, 8)."""

from __future__ import annotations

import pytest
import torch

import tokbench  # noqa: F401  (installs the torchvision shim before timm is imported)
from tokbench import flop_table
from tokbench.config import MethodConfig
from tokbench.errors import ConfigError
from tokbench.flops_ref import ViTArch, backbone_macs, block_counts, ref_frame_gmacs, rollout_macs
from tokbench.frame_flops import frame_costs
from tokbench.models.zoo import LoadedModel
from tokbench.schedule import block_tokens, solve_macs

timm = pytest.importorskip("timm")

# 4 blocks, C = 8, 2 heads (C_h = 4), MLP 16, 4 x 4 grid (N = 16) + CLS: N' = 17
ARCH = ViTArch(depth=4, dim=8, heads=2, mlp_dim=16, grid=(4, 4), prefix=1)
SCHEDULE = ((0, 8), (2, 4))  # block 0 keeps 8 patches, block 2 drops 4 more: MLPs see 8, 8, 4, 4
TINY_MODEL = flop_table.PaperModel("tiny", "classify", ARCH, (64, 64))


def _attn(n: int) -> int:
    """QKV + projection MACs, their biases and residual 1 on n tokens of ARCH: n (8·24 + 8·8 + 32 + 8)."""
    return n * (8 * 24 + 8 * 8 + (24 + 8) + 8)


def _mlp(n: int) -> int:
    """Both MLP linears, their biases and residual 2 on n tokens of ARCH: n (2·8·16 + 24 + 8)."""
    return n * (2 * 8 * 16 + (16 + 8) + 8)


def _mix(n_q: int, n_k: int) -> int:
    """q kᵀ + attn v: 2 H n_q n_k C_h = 16 n_q n_k."""
    return 16 * n_q * n_k


# ------------------------------------------------------------------------------------------ paper convention


def test_block_counts_of_a_schedule():
    counts = block_counts(ARCH, schedule=SCHEDULE)
    assert counts == [(16, 8), (8, 8), (8, 4), (4, 4)]
    assert [after for _, after in counts] == block_tokens(16, 4, SCHEDULE)
    assert block_counts(ARCH, 8, SCHEDULE) == counts
    assert block_counts(ARCH, 5) == [(16, 5), (5, 5), (5, 5), (5, 5)]


def test_schedule_backbone_is_the_hand_sum_of_its_blocks():
    pos = 17 * 8
    shrinking = (pos + _attn(17) + _mix(17, 17) + _mlp(9)  # block 0: attention at N', MLP after the first drop
                 + _attn(9) + _mix(9, 9) + _mlp(9)
                 + _attn(9) + _mix(9, 9) + _mlp(5)  # block 2: attention before its drop, MLP after
                 + _attn(5) + _mix(5, 5) + _mlp(5))
    assert backbone_macs(ARCH, kv_reuse=False, schedule=SCHEDULE) == shrinking == 27656
    reused = (pos + _attn(17) + _mix(17, 17) + _mlp(9) + _attn(9) + _mix(9, 17) + _mlp(9)
              + _attn(9) + _mix(9, 17) + _mlp(5) + _attn(5) + _mix(5, 17) + _mlp(5))  # queries x all N' keys
    assert backbone_macs(ARCH, kv_reuse=True, schedule=SCHEDULE) == reused


def test_schedule_overheads_are_the_hand_sums():
    kw = {"kv_reuse": False, "track_radius": 1, "rollout_form": "vector", "schedule": SCHEDULE}
    cut = ref_frame_gmacs(ARCH, "pruned", **kw)
    # vector rollout, rows x columns per block: 9x9 (block 0, columns cut), 9x9, 5x9 (block 2's drop), 5x5
    assert cut["overhead_gmacs_rollout"] * 1e9 == 9 * 9 + 9 * 9 + 5 * 9 + 5 * 5
    assert cut["overhead_gmacs_match"] * 1e9 == (16 - 8) * 8 * 4  # nearest kept, against the first cut's n
    assert cut["overhead_gmacs_tracking"] * 1e9 == 16 * 9 * 8
    assert cut["overhead_gmacs_propagation"] == 0.0
    assert (cut["kept_tokens"], cut["kept_tokens_last"]) == (8, 4)
    assert cut["gmacs"] * 1e9 == pytest.approx(27656 + 232 + 256 + 1152)
    keep = ref_frame_gmacs(ARCH, "pruned", block0_columns="keep", **kw)
    assert keep["overhead_gmacs_rollout"] * 1e9 == 9 * 17 + 9 * 9 + 5 * 9 + 5 * 5
    reused = ref_frame_gmacs(ARCH, "pruned", **{**kw, "kv_reuse": True, "rollout_form": "matrix"})
    assert reused["overhead_gmacs_rollout"] * 1e9 == 4 * 17**3  # buffered rows: full size, schedule or not


@pytest.mark.parametrize(("kv_reuse", "columns"), [(False, "cut"), (False, "keep"), (True, "cut")])
def test_a_one_drop_schedule_is_one_shot_pruning_paper(kv_reuse, columns):
    kw = {"kv_reuse": kv_reuse, "rollout_form": "vector", "block0_columns": columns}
    assert ref_frame_gmacs(ARCH, "pruned", schedule=((0, 12),), **kw) == ref_frame_gmacs(
        ARCH, "pruned", keep_tokens=4, **kw)
    one_shot = MethodConfig(keep_ratio=4 / 16, fg_ratio=1, bg_ratio=0, reset_every=4).resolve(kv_reuse)
    scheduled = MethodConfig(drop_schedule="0:12", reset_every=4).resolve(kv_reuse)
    assert flop_table.paper_kind_costs(TINY_MODEL, scheduled) == flop_table.paper_kind_costs(TINY_MODEL, one_shot)


def test_paper_rows_carry_the_schedule():
    base = MethodConfig(drop_schedule="0:8,2:4", propagation="supplement", reset_every=4)
    dense, row = flop_table.paper_rows(TINY_MODEL, [0.25], base=base, frames=4)
    assert dense["error"] == "" and dense["drop_schedule"] == "" and row["error"] == ""
    pruned = flop_table.paper_kind_costs(TINY_MODEL, base.resolve(False))["pruned"]
    assert pruned.gmacs * 1e9 == pytest.approx(27656 + 232 + 256 + 1152)
    assert row["gmacs_pruned"] == round(pruned.gmacs, 5)  # rows round GMACs to 5 decimals
    assert row["overhead_gmacs_propagation"] == 0.0 and dense["overhead_gmacs_propagation"] == 0.0
    # t = 0 full (16), 1..3 pruned (8 after block 0, 4 through the last block)
    assert row["kept_tokens_mean"] == (16 + 3 * 8) / 4 and row["kept_tokens_last_mean"] == (16 + 3 * 4) / 4
    shown = flop_table.table_columns([dense, row])
    assert "overhead_gmacs_propagation" in shown and "kept_tokens_last_mean" in shown
    assert "kept_tokens_last_mean" not in flop_table.table_columns([dense])


def test_paper_convention_refusals():
    with pytest.raises(ConfigError, match="block 0"):
        flop_table.paper_kind_costs(TINY_MODEL, MethodConfig(drop_schedule="2:8").resolve(False))
    with pytest.raises(ConfigError, match="block 0"):
        block_counts(ARCH, schedule=((1, 8),))
    with pytest.raises(ConfigError, match="rollout_form=vector") as err:
        ref_frame_gmacs(ARCH, "pruned", schedule=SCHEDULE, kv_reuse=False, rollout_form="matrix")
    assert "\n" not in str(err.value)
    with pytest.raises(ConfigError, match="disagrees"):
        ref_frame_gmacs(ARCH, "pruned", keep_tokens=5, schedule=SCHEDULE)
    with pytest.raises(ConfigError):
        rollout_macs(ARCH, form="vector", schedule=((0, 8), (4, 4)))  # block 4 is past the depth


# ------------------------------------------------------------------------------------------ fvcore convention


@pytest.fixture(scope="module")
def tiny_vit() -> LoadedModel:
    """A 4-block timm classifier (C = 192, 3 heads, 4 x 4 grid + CLS)."""
    torch.manual_seed(0)
    model = timm.create_model("vit_tiny_patch16_224", pretrained=False, img_size=64, depth=4).eval()
    return LoadedModel("tiny-vit4", "classify", model, model, (64, 64))


def test_a_one_drop_schedule_is_one_shot_pruning_fvcore(tiny_vit):
    frame = flop_table._input_frame(tiny_vit)
    one_shot = flop_table.kind_costs(tiny_vit, MethodConfig(keep_ratio=4 / 16, fg_ratio=1, bg_ratio=0), frame)
    scheduled = flop_table.kind_costs(tiny_vit, MethodConfig(drop_schedule="0:12"), frame)
    assert one_shot.keys() == scheduled.keys()
    for kind, cost in one_shot.items():  # the rollout split (a grid trace vs the trace without the heatmap) too
        for field in ("gmacs", "kept_tokens", "rollout", "tracking", "match", "propagation", "kept_tokens_last"):
            assert getattr(scheduled[kind], field) == pytest.approx(getattr(cost, field), abs=1e-9), (kind, field)
    assert one_shot["pruned"].rollout > 0 and one_shot["pruned"].match > 0


def test_fvcore_counts_the_propagation_solves_by_hand(tiny_vit):
    frame = flop_table._input_frame(tiny_vit)
    costs = {p: frame_costs(tiny_vit.engine(MethodConfig(drop_schedule="0:8,2:4", propagation=p)), frame,
                            kinds=("pruned",))["pruned"] for p in ("none", "supplement", "reference")}
    solves = 2 * solve_macs(8)  # blocks 1 and 2 (after the first cut, up to the last drop), 8 patches entering each
    assert solves == 2 * (8**3 // 3 + 8**2) == 468
    for p in ("supplement", "reference"):
        assert costs[p].overhead_gmacs_propagation * 1e9 == pytest.approx(solves)
        assert costs[p].gmacs == pytest.approx(costs["none"].gmacs + solves / 1e9, abs=1e-12)
        assert "aten::linalg_solve_ex" in costs[p].unsupported  # what fvcore skips is still listed
    assert costs["none"].overhead_gmacs_propagation == 0 and (costs["none"].kept_tokens,
                                                               costs["none"].kept_tokens_last) == (8, 4)
    _, row = flop_table.flop_rows(tiny_vit, [0.25], base=MethodConfig(drop_schedule="0:8,2:4",
                                                                      propagation="supplement", reset_every=2),
                                  frames=4)
    assert row["error"] == "" and row["unit"] == "clip"
    assert row["overhead_gmacs_propagation"] * 1e9 == pytest.approx(2 * solves)  # t = 1 and 3 pruned
    assert "aten::linalg_solve_ex" in row["unsupported_ops"]
    assert row["kept_tokens_mean"] == (16 + 8 + 8 + 8) / 4 and row["kept_tokens_last_mean"] == (16 + 8 + 4 + 4) / 4


def test_windowed_blocks_solve_nothing_under_supplement():
    from tokbench.vit_windowed import VisionTransformerSAM

    torch.manual_seed(0)
    model = VisionTransformerSAM(img_size=80, patch_size=16, embed_dim=32, depth=3, num_heads=2, window_size=2,
                                 global_attn_indexes=(1,), use_rel_pos=True, neck_chans=0, num_classes=0).eval()
    loaded = LoadedModel("tiny-sam", "features", model, model, (80, 80))
    config = MethodConfig(drop_schedule="0:5,2:5", propagation="supplement")
    cost = frame_costs(loaded.engine(config), flop_table._input_frame(loaded), kinds=("pruned",))["pruned"]
    assert cost.overhead_gmacs_propagation * 1e9 == solve_macs(20)  # block 1 (global); block 2 is windowed
    with pytest.raises(ConfigError, match="windowed"):
        loaded.engine(config.replace(propagation="reference"))


def test_acceptance_synthvid_det_schedule_lies_between_one_shot_budgets():
    """Issue 16: ``drop_schedule=0:300,3:50`` on the shipped detector costs less than one-shot pruning to 100 of
    400 tokens and more than one-shot pruning to 50, per frame (fvcore, first and reset frames included)."""
    from tokbench.models.zoo import load_model

    loaded = load_model("synthvid-det")
    frame = flop_table._input_frame(loaded)
    configs = {"one-shot 100": MethodConfig(keep_ratio=100 / 400, fg_ratio=1, bg_ratio=0),
               "schedule": MethodConfig(drop_schedule="0:300,3:50", propagation="supplement"),
               "one-shot 50": MethodConfig(keep_ratio=50 / 400, fg_ratio=1, bg_ratio=0)}
    full = frame_costs(loaded.engine(configs["schedule"]), frame, kinds=("full",))["full"]
    counts = flop_table.step_counts(32, 8)
    per_frame = {}
    for name, config in configs.items():
        pruned = frame_costs(loaded.engine(config), frame, kinds=("pruned",))["pruned"]
        per_kind = {kind: flop_table.KindGmacs(c.gmacs, c.kept_tokens) for kind, c in
                    {"full": full, "reset": full, "pruned": pruned}.items()}
        per_frame[name] = flop_table.unit_columns(per_kind, counts, unit="frame")["gmacs_per_frame"]
        if name == "schedule":
            assert pruned.overhead_gmacs_propagation * 1e9 == 3 * solve_macs(100)  # blocks 1, 2, 3
            assert (pruned.kept_tokens, pruned.kept_tokens_last) == (100, 50)
    assert per_frame["one-shot 100"] > per_frame["schedule"] > per_frame["one-shot 50"], per_frame


# ------------------------------------------------------------------------------------------------------- bench


def test_bench_reports_the_propagation_time(tiny_vit):
    from tokbench.bench import run_bench

    base = MethodConfig(drop_schedule="0:8,2:4", propagation="supplement")
    rows = {r["name"]: r for r in run_bench(tiny_vit, [0.25], ["rgtp"], base=base, frames=3, repeats=1, warmup=0,
                                            batch=1)}
    rgtp, dense = rows["rgtp keep=0.25"], rows["tokbench dense"]
    assert rgtp["error"] == "" and rgtp["drop_schedule"] == "0:8,2:4" and "drop_schedule" not in dense
    assert 0 < rgtp["propagation_ms"] <= rgtp["timed_parts_ms"] and dense["propagation_ms"] == 0
