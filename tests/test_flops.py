"""FLOP counters: fvcore with tokbench's handles against closed forms, and the reference convention against the
paper's published numbers (method.md §8, §10)."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import tokbench  # noqa: F401  (installs the torchvision shim before timm is imported)
from tokbench.errors import ConfigError, TokbenchError
from tokbench.flops import EXTRA_HANDLES, SDPA_OP, count_gmacs, dense_vit_gmacs, vit_closed_form_gmacs
from tokbench.flops_ref import (
    ViTArch,
    backbone_macs,
    fills_nearest_kept,
    match_macs,
    ref_clip_gmacs,
    ref_frame_gmacs,
    rollout_macs,
    schedule_average,
    temporal_head_gmacs,
    tracking_macs,
    vitdet_b_arch,
)

timm = pytest.importorskip("timm")


def _tiny_vit(**kwargs) -> nn.Module:
    return timm.create_model("vit_tiny_patch16_224", pretrained=False, img_size=64, **kwargs).eval()


def _explicit(model: nn.Module) -> nn.Module:
    for blk in model.blocks:
        blk.attn.fused_attn = False
    return model


# --------------------------------------------------------------------------------------------------------------
# fvcore convention


@pytest.mark.parametrize(
    ("kwargs", "arch_kwargs", "fc_norm"),
    [
        ({}, {"prefix": 1}, False),
        ({"depth": 3, "embed_dim": 96}, {"depth": 3, "dim": 96, "mlp_dim": 384, "prefix": 1}, False),
        ({"depth": 2, "class_token": False, "global_pool": "avg"}, {"depth": 2, "prefix": 0}, True),
        ({"depth": 2, "reg_tokens": 4}, {"depth": 2, "prefix": 5}, False),
    ],
)
@pytest.mark.parametrize("sdpa", ["handle", "explicit"])
def test_fvcore_matches_closed_form_on_tiny_vits(kwargs, arch_kwargs, fc_norm, sdpa):
    model = _tiny_vit(**kwargs)
    if sdpa == "explicit":
        _explicit(model)
    arch = ViTArch(**{"depth": 12, "dim": 192, "heads": 3, "mlp_dim": 768, "grid": (4, 4), **arch_kwargs})
    assert model.num_prefix_tokens == arch.prefix
    features = dense_vit_gmacs(model, 64, sdpa=sdpa)
    assert features.gmacs == pytest.approx(vit_closed_form_gmacs(arch, final_norm=not fc_norm), rel=1e-9)
    full = count_gmacs(model, torch.zeros(1, 3, 64, 64), sdpa=sdpa)
    expected = vit_closed_form_gmacs(arch, final_norm=not fc_norm, fc_norm=fc_norm, num_classes=1000)
    assert full.gmacs == pytest.approx(expected, rel=1e-9)
    assert sum(full.by_operator.values()) == pytest.approx(full.gmacs, rel=1e-12)


@pytest.fixture(scope="module")
def vit_base() -> nn.Module:
    return timm.create_model("vit_base_patch16_224", pretrained=False).eval()


def test_vit_base_sdpa_handle_matters(vit_base):
    from fvcore.nn import FlopCountAnalysis

    counted = dense_vit_gmacs(vit_base, 224)
    assert round(counted.gmacs, 2) == 17.58
    assert counted.sdpa_flops == "handle"
    assert counted.by_operator["scaled_dot_product_attention"] == pytest.approx(12 * 2 * 12 * 197**2 * 64 / 1e9)
    assert counted.unsupported == {"aten::add": 25, "aten::gelu": 12}  # elementwise ops: uncounted by convention
    arch = ViTArch(depth=12, dim=768, heads=12, mlp_dim=3072, grid=(14, 14), prefix=1)
    assert counted.gmacs == pytest.approx(vit_closed_form_gmacs(arch), rel=1e-12)

    # plain fvcore silently drops the fused attention: 16.87 G, listed only as unsupported
    class Features(nn.Module):
        def __init__(self):
            super().__init__()
            self.vit = vit_base

        def forward(self, x):
            return self.vit.forward_features(x)

    plain = FlopCountAnalysis(Features(), torch.zeros(1, 3, 224, 224))
    plain.unsupported_ops_warnings(False).uncalled_modules_warnings(False)
    with torch.no_grad():
        assert round(plain.total() / 1e9, 2) == 16.87
        assert plain.unsupported_ops()[SDPA_OP] == 12

    with pytest.raises(TokbenchError, match="fused attention"):
        dense_vit_gmacs(vit_base, 224, sdpa="explicit")


def test_vit_base_explicit_attention_gives_the_same_count():
    model = _explicit(timm.create_model("vit_base_patch16_224", pretrained=False).eval())
    counted = dense_vit_gmacs(model, 224, sdpa="explicit")
    assert round(counted.gmacs, 2) == 17.58
    assert counted.sdpa_flops == "explicit"
    assert counted.by_operator["matmul"] == pytest.approx(12 * 2 * 12 * 197**2 * 64 / 1e9)
    assert {"aten::softmax", "aten::mul", "aten::gelu"} <= set(counted.unsupported)


def test_default_fvcore_handles_are_kept():
    from fvcore.nn.flop_count import _DEFAULT_SUPPORTED_OPS

    for op in (
        "aten::linear",
        "aten::bmm",
        "aten::einsum",
        "aten::_convolution",
        "aten::layer_norm",
        "aten::upsample_bilinear2d",
    ):
        assert op in _DEFAULT_SUPPORTED_OPS and op not in EXTRA_HANDLES


def test_sdpa_handle_on_3d_and_4d_and_callables():
    import torch.nn.functional as F

    q, k, v = torch.zeros(2, 3, 5, 8), torch.zeros(2, 3, 7, 8), torch.zeros(2, 3, 7, 4)
    assert count_gmacs(F.scaled_dot_product_attention, (q, k, v)).gmacs * 1e9 == 2 * 3 * 5 * 7 * (8 + 4)
    q3, k3 = torch.zeros(2, 5, 8), torch.zeros(2, 7, 8)
    assert count_gmacs(F.scaled_dot_product_attention, (q3, k3, k3)).gmacs * 1e9 == 2 * 2 * 5 * 7 * 8
    with pytest.raises(ConfigError):
        count_gmacs(F.scaled_dot_product_attention, (q, k, v), sdpa="fused")


def test_matmul_handle_accepts_vectors_and_broadcasting():
    a, m = torch.zeros(6, 6), torch.zeros(3, 6, 2)
    assert count_gmacs(torch.matmul, (a, torch.zeros(6))).gmacs * 1e9 == 36  # fvcore's own raises IndexError
    assert count_gmacs(torch.matmul, (a, m)).gmacs * 1e9 == 3 * 6 * 6 * 2  # fvcore's own counts 6·6·2
    assert count_gmacs(torch.mv, (a, torch.zeros(6))).gmacs * 1e9 == 36
    assert count_gmacs(torch.baddbmm, (torch.zeros(3, 6, 2), torch.zeros(3, 6, 6), m)).gmacs * 1e9 == 216
    einsum = count_gmacs(lambda x, y: torch.einsum("bqc,bkc->bqk", x, y), (m, m))
    assert einsum.by_operator == {"einsum": 3 * 6 * 6 * 2 / 1e9}


# --------------------------------------------------------------------------------------------------------------
# Reference convention: published anchors (ViTDet-B, 672 px)

VITDET = vitdet_b_arch(672)
#: full frames (first + every 8th) in ImageNet VID val, inferred: [0.126527, 0.126537] reproduces Table 1
FRAC_FULL = 0.12653


def _full() -> dict[str, float]:
    return ref_frame_gmacs(VITDET, "full", rollout_form="matrix", rollout_pool=2)


def _pruned(n: int, r: int = 1) -> dict[str, float]:
    return ref_frame_gmacs(VITDET, "pruned", keep_tokens=n, track_radius=r, rollout_form="matrix", rollout_pool=2)


def _average(n: int, r: int = 1) -> float:
    counts = {"full": FRAC_FULL, "pruned": 1 - FRAC_FULL}
    return schedule_average({"full": _full(), "pruned": _pruned(n, r)}, counts)["gmacs"]


def test_vitdet_dense_and_full_frame():
    assert VITDET.num_patches == 1764 and VITDET.num_windows == 9 and VITDET.rollout_blocks == (2, 5, 8, 11)
    dense = ref_frame_gmacs(VITDET, "dense")
    assert round(dense["gmacs"], 2) == 174.50 and dense["overhead_gmacs"] == 0
    full = _full()
    assert full["overhead_gmacs_rollout"] == pytest.approx(4 * 441**3 / 1e9)
    assert round(full["gmacs"], 2) == 174.84
    assert full["backbone_gmacs"] == dense["gmacs"]


def test_vitdet_pruned_keep196_frame():
    pruned = _pruned(196)
    assert round(pruned["gmacs"], 2) == 28.23
    assert pruned["overhead_gmacs_tracking"] * 1e9 == 1764 * 9 * 768  # 12.2 M
    assert pruned["overhead_gmacs_rollout"] * 1e9 == 4 * 441**3  # K/V reuse: the pooled matrix rollout
    assert pruned["overhead_gmacs_match"] == 0  # scores are computed, no nearest-kept fill
    vector = ref_frame_gmacs(VITDET, "pruned", keep_tokens=196, rollout_form="vector")
    assert round(vector["gmacs"], 2) == 27.89  # the unpooled vector form does not give the published 28.23


@pytest.mark.parametrize(("r", "published"), [(0, 46.77), (1, 46.78), (2, 46.80), (3, 46.82)])
def test_supplement_table1_tracking_window(r, published):
    assert round(_average(196, r), 2) == published


@pytest.mark.parametrize(("n", "published"), [(767, 93.4), (512, 72.6), (384, 62.1), (196, 46.8), (64, 36.0)])
def test_published_keep_table(n, published):
    assert round(_average(n), 1) == published


def test_tracking_costs_from_method_md():
    assert [round(tracking_macs(VITDET, r) / 1e6, 1) for r in range(4)] == [0, 12.2, 33.9, 66.4]


# --------------------------------------------------------------------------------------------------------------
# Reference convention: formulas and options


def test_plain_vit_block_formula_and_dense_equals_keep_all():
    arch = ViTArch(depth=2, dim=8, heads=2, mlp_dim=16, grid=(2, 3), prefix=1)
    n = 7  # N' = 1 + 6
    block = n * 8 * 24 + n * 64 + 2 * n * 8 * 16 + n * (24 + 8 + 16 + 8) + 2 * n * 8 + 2 * 2 * n * n * 4
    assert backbone_macs(arch) == 2 * block + n * 8  # + position-encoding add
    assert backbone_macs(arch, 6) == backbone_macs(arch)
    assert backbone_macs(arch, 6, kv_reuse=False) == backbone_macs(arch)


def test_shrinking_sequence_rollout_and_matching():
    arch = ViTArch(depth=3, dim=8, heads=2, mlp_dim=16, grid=(4, 4), prefix=1)
    kw = {"keep_tokens": 5, "kv_reuse": False, "track_radius": 0}
    matrix = ref_frame_gmacs(arch, "pruned", **kw)
    assert matrix["overhead_gmacs_rollout"] * 1e9 == 17**3 + 2 * 6**3
    assert matrix["overhead_gmacs_match"] * 1e9 == match_macs(arch, 5) == 11 * 5 * 4
    vector = ref_frame_gmacs(arch, "pruned", rollout_form="vector", **kw)
    assert vector["overhead_gmacs_rollout"] * 1e9 == 3 * 6**2
    keep = ref_frame_gmacs(arch, "pruned", rollout_form="vector", block0_columns="keep", **kw)
    assert keep["overhead_gmacs_rollout"] * 1e9 == 2 * 6**2 + 6 * 17
    assert keep["overhead_gmacs_match"] == 0
    assert rollout_macs(arch, form="vector") == 3 * 17**2


def test_window_padding_and_window_queries():
    arch = vitdet_b_arch(1024)
    assert arch.num_windows == 25  # 64 -> padded to 70 = 5·14
    all_q = ref_frame_gmacs(arch, "pruned", keep_tokens=196, rollout_pool=2)
    kept_q = ref_frame_gmacs(arch, "pruned", keep_tokens=196, rollout_pool=2, window_queries="kept")
    # windowed blocks 1, 3, 4, 6, 7, 9, 10 (block 0 is never cut): 24 windows' worth of queries fewer, in the
    # attention (2 H ws^2 ws^2 C_h) and the rel-pos terms (H ws^2 (ws + ws) C_h + 2 H ws^2 ws^2)
    saved = 7 * (25 - 1) * (2 * 12 * 196**2 * 64 + 12 * 196 * 28 * 64 + 2 * 12 * 196**2)
    assert round((all_q["gmacs"] - kept_q["gmacs"]) * 1e9) == saved
    full = ref_frame_gmacs(arch, "full", rollout_pool=2)
    assert full["overhead_gmacs_rollout"] * 1e9 == 4 * 1024**3


def test_schedule_average_and_clip():
    per_kind = {"full": {"gmacs": 10.0, "kept_tokens": 16.0}, "pruned": {"gmacs": 2.0, "kept_tokens": 4.0}}
    avg = schedule_average(per_kind, {"full": 1, "pruned": 3, "pattern": 0})
    assert avg == {"gmacs": 4.0, "kept_tokens": 7.0}
    assert schedule_average({"a": 1.0, "b": 3.0}, {"a": 1, "b": 1}) == 2.0
    with pytest.raises(ConfigError):
        schedule_average(per_kind, {"pattern": 2})
    spatial = ViTArch(depth=12, dim=768, heads=12, mlp_dim=3072, grid=(14, 14), prefix=1)
    temporal = ViTArch(depth=4, dim=768, heads=12, mlp_dim=3072, grid=(1, 16), prefix=1)
    steps = {"full": ref_frame_gmacs(spatial, "full", rollout_form="vector")}
    clip = ref_clip_gmacs(steps, {"full": 16}, temporal=temporal, num_classes=400, views=12)
    head = (backbone_macs(temporal) + 400 * 769) / 1e9
    assert clip == pytest.approx(12 * (16 * steps["full"]["gmacs"] + head))


@pytest.mark.parametrize(
    "kwargs",
    [
        {"kind": "pruned"},
        {"kind": "full", "keep_tokens": 10},
        {"kind": "pruned", "keep_tokens": 0},
        {"kind": "sometimes"},
        {"kind": "full", "rollout_pool": 4},  # 42 is not divisible by 4
        {"kind": "pruned", "keep_tokens": 10, "kv_reuse": False},  # windows need K/V reuse
        {"kind": "full", "rollout_form": "tensor"},
    ],
)
def test_ref_frame_rejects_bad_options(kwargs):
    with pytest.raises(ConfigError):
        ref_frame_gmacs(VITDET, **kwargs)


def test_bench_block_macs_closed_form_matches_fvcore():
    import timm

    from tokbench.bench import block_macs
    from tokbench.flops import count_gmacs

    block = timm.create_model("vit_tiny_patch16_224", pretrained=False).blocks[0].eval()
    c = 192
    assert block_macs(block, 50) == 50 * 12 * c * c + 2 * 50 * 50 * c
    counted = count_gmacs(block, (torch.randn(1, 50, c),)).gmacs * 1e9
    norms = 2 * 5 * 50 * c  # fvcore also counts the two LayerNorms, 5 per element; block_macs leaves them out
    assert abs(counted - norms - block_macs(block, 50)) < 1e-6 * block_macs(block, 50)


def test_temporal_head_and_classifier():
    temporal = ViTArch(depth=4, dim=768, heads=12, mlp_dim=3072, grid=(1, 16), prefix=1)
    assert temporal_head_gmacs(temporal, 400) * 1e9 == pytest.approx(backbone_macs(temporal) + 400 * 769)
    assert temporal_head_gmacs(None, 10, dim=8) * 1e9 == pytest.approx(10 * 9)  # a timm classifier alone
    with pytest.raises(ConfigError):
        temporal_head_gmacs(None, 10)


@pytest.mark.parametrize(
    ("kind", "kv_reuse", "columns", "fill", "expected"),
    [
        ("pruned", False, "cut", "nearest_kept", True),  # classification [REF]
        ("pattern", False, "cut", "nearest_kept", True),
        ("pruned", False, "cut", "previous", False),  # overwritten by the previous heatmap: no matching
        ("pattern", False, "cut", "previous", True),  # pattern frames always match (method.md 2.7)
        ("pruned", False, "keep", "computed", False),  # exact columns through block 0
        ("pruned", True, "cut", "computed", False),  # K/V reuse: buffered rows give every position a score
        ("full", False, "cut", "nearest_kept", False),
        ("pruned", True, "cut", "nearest_kept", True),  # asked for explicitly over computed scores
        ("pruned", False, "keep", "nearest_kept", True),
    ],
)
def test_which_frames_pay_for_nearest_kept_matching(kind, kv_reuse, columns, fill, expected):
    assert fills_nearest_kept(kind, kv_reuse=kv_reuse, block0_columns=columns, score_fill=fill) is expected


def test_kept_window_queries_count_rel_pos_for_the_kept_queries_only():
    from tokbench.flops_ref import ViTArch, mixing_macs, rel_pos_query_macs

    arch = ViTArch(depth=2, dim=2, heads=1, mlp_dim=4, grid=(4, 4), window_size=2, global_blocks=(1,), rel_pos=True)
    # one query over a 2x2 window: q.k and attn.v 2*1*1*4*2 = 16; rel-pos (2+2)*2 = 8 MACs + 2*4 = 8 adds
    assert rel_pos_query_macs(arch, 1, 2, 2) == 16
    assert mixing_macs(arch, 0, 3, 16, "kept") == 3 * 16 + 3 * 16
    # all: 4 windows of 4 queries: 4 * (2*4*4*2) attention + 4 * (4*4*2 + 2*16) rel-pos
    assert mixing_macs(arch, 0, 3, 16, "all") == 4 * 64 + 4 * 64
