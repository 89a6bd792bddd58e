"""Attention rollout: known answers, matrix == vector, batching."""

import pytest
import torch

from tokbench.rollout import (
    block_matrices,
    cell_index,
    fuse_heads,
    pool_attention,
    pool_start,
    residual_normalize,
    rollout_matrix,
    rollout_vector,
    unpool_scores,
)


def _random_attn(b=2, h=3, n=7, gen=None):
    return torch.randn(b, h, n, n, generator=gen).softmax(dim=-1)


def test_fuse_heads_known_values():
    attn = torch.tensor([[[[0.2, 0.8]], [[0.6, 0.4]]]])  # [B=1, H=2, 1, 2]
    assert torch.allclose(fuse_heads(attn, "mean"), torch.tensor([[[0.4, 0.6]]]))
    rms = torch.tensor([[[(0.04 + 0.36) / 2, (0.64 + 0.16) / 2]]]).sqrt()
    assert torch.allclose(fuse_heads(attn, "rms"), rms)
    assert torch.allclose(fuse_heads(attn, "max"), torch.tensor([[[0.6, 0.8]]]))
    assert torch.allclose(fuse_heads(attn, "min"), torch.tensor([[[0.2, 0.4]]]))
    with pytest.raises(ValueError):
        fuse_heads(attn, "median")


def test_residual_normalize_hand_computed():
    fused = torch.tensor([[[0.5, 0.5], [0.0, 1.0]]])
    expected = torch.tensor([[[0.75, 0.25], [0.0, 1.0]]])
    assert torch.allclose(residual_normalize(fused), expected)


def test_residual_normalize_kept_rows_put_the_identity_on_their_own_column():
    rows = torch.tensor([[[0.5, 0.5, 0.0], [0.0, 0.0, 1.0]]])  # kept tokens 0 and 2 of 3, over all 3 keys
    expected = torch.tensor([[[0.75, 0.25, 0.0], [0.0, 0.0, 1.0]]])
    assert torch.allclose(residual_normalize(rows, own=torch.tensor([[0, 2]])), expected)
    assert torch.equal(rows, torch.tensor([[[0.5, 0.5, 0.0], [0.0, 0.0, 1.0]]]))  # input untouched


def test_block_matrices_batches_equal_shapes_and_matches_per_block():
    gen = torch.Generator().manual_seed(3)
    full = _random_attn(n=7, gen=gen)
    kept = torch.randn(2, 3, 4, 7, generator=gen).softmax(-1)  # 4 kept query rows over 7 keys
    own = torch.tensor([[0, 2, 3, 6], [1, 2, 4, 5]])
    probs = [full, kept, kept.flip(1), _random_attn(n=7, gen=gen)]
    mats = block_matrices(probs, "rms", own)
    for p, m in zip(probs, mats, strict=True):
        expect = residual_normalize(fuse_heads(p, "rms"), None if p.shape[-2] == p.shape[-1] else own)
        assert torch.allclose(m, expect, atol=1e-7)
    assert torch.allclose(mats[1][0, 1], (fuse_heads(kept, "rms")[0, 1] + torch.eye(7)[2]) / (
        fuse_heads(kept, "rms")[0, 1].sum() + 1))


def test_rms_identity_weight_is_below_half():
    fused = fuse_heads(_random_attn(), "rms")
    a = residual_normalize(fused)
    identity_weight = 1 / (1 + fused.sum(-1))  # row sums of rms-fused attention are >= 1
    assert torch.allclose(a, (fused + torch.eye(7)) * identity_weight.unsqueeze(-1), atol=1e-6)
    assert (identity_weight <= 0.5 + 1e-6).all()
    assert torch.allclose(a.sum(-1), torch.ones(2, 7))


def test_identity_attention_gives_identity_rollout():
    eye = torch.eye(5).expand(2, 4, 5, 5)
    assert torch.allclose(rollout_matrix([eye, eye, eye]), torch.eye(5).expand(2, 5, 5))
    start = torch.tensor([[0.0, 2.0, 0.0, 2.0, 0.0], [1.0, 0.0, 0.0, 0.0, 0.0]])
    assert torch.allclose(rollout_vector([eye, eye], start), start / start.sum(1, keepdim=True))


@pytest.mark.parametrize("fusion", ["mean", "rms", "max", "min"])
def test_rollout_rows_are_stochastic(fusion):
    gen = torch.Generator().manual_seed(1)
    rollout = rollout_matrix([_random_attn(gen=gen) for _ in range(4)], fusion)
    assert torch.allclose(rollout.sum(-1), torch.ones(2, 7), atol=1e-6)
    assert (rollout >= 0).all()


def test_rollout_order_is_last_block_leftmost():
    gen = torch.Generator().manual_seed(2)
    attns = [_random_attn(gen=gen) for _ in range(3)]
    a = [residual_normalize(fuse_heads(x, "rms")) for x in attns]
    assert torch.allclose(rollout_matrix(attns), a[2] @ a[1] @ a[0], atol=1e-6)


@pytest.mark.parametrize("fusion", ["mean", "rms"])
def test_matrix_and_vector_forms_agree(fusion):
    gen = torch.Generator().manual_seed(3)
    attns = [_random_attn(gen=gen) for _ in range(5)]
    start = torch.rand(2, 7, generator=gen)
    start = start / start.sum(1, keepdim=True)
    from_matrix = torch.einsum("bij,bi->bj", rollout_matrix(attns, fusion), start)
    from_matrix = from_matrix / from_matrix.sum(1, keepdim=True)
    assert torch.allclose(rollout_vector(attns, start, fusion), from_matrix, atol=1e-6)


def test_class_token_start_selects_the_class_row():
    gen = torch.Generator().manual_seed(4)
    attns = [_random_attn(gen=gen) for _ in range(3)]
    start = torch.zeros(2, 7)
    start[:, 0] = 1
    expected = rollout_matrix(attns)[:, 0]
    assert torch.allclose(rollout_vector(attns, start), expected / expected.sum(1, keepdim=True), atol=1e-6)


def test_batch_of_two_equals_two_calls():
    gen = torch.Generator().manual_seed(5)
    attns = [_random_attn(gen=gen) for _ in range(3)]
    start = torch.rand(2, 7, generator=gen)
    both = rollout_vector(attns, start)
    for i in range(2):
        single = rollout_vector([a[i : i + 1] for a in attns], start[i : i + 1])
        assert torch.allclose(both[i : i + 1], single, atol=1e-7)
    assert torch.allclose(rollout_matrix(attns)[1:], rollout_matrix([a[1:] for a in attns]), atol=1e-7)


# -- p x p cell pooling ------------------------------------------------------------------------------------------


def test_cell_index_keeps_prefix_tokens_as_their_own_cells():
    assert cell_index((2, 4), 2, 1).tolist() == [0, 1, 1, 2, 2, 1, 1, 2, 2]
    assert cell_index((4, 4), 4, 0).tolist() == [0] * 16
    with pytest.raises(ValueError):
        cell_index((6, 6), 4, 0)


def test_pool_attention_sums_keys_and_averages_queries_by_hand():
    gen = torch.Generator().manual_seed(0)
    fused = torch.rand(1, 9, 9, generator=gen)  # prefix 1, grid 2 x 4, p = 2: cells {0}, A, B
    cells = [[0], [1, 2, 5, 6], [3, 4, 7, 8]]
    pooled, filled = pool_attention(fused, (2, 4), 2, 1)
    expected = torch.tensor([[fused[0][q][:, k].sum(1).mean() for k in cells] for q in cells])
    assert torch.allclose(pooled[0], expected) and filled.all()
    stochastic = fused / fused.sum(-1, keepdim=True)
    assert torch.allclose(pool_attention(stochastic, (2, 4), 2, 1)[0].sum(-1), torch.ones(1, 3))


def test_pool_attention_of_kept_rows_averages_the_kept_queries_only():
    gen = torch.Generator().manual_seed(1)
    full = torch.rand(1, 9, 9, generator=gen)
    kept = torch.tensor([[0, 2, 5]])  # the class token and two queries of cell A; none of cell B
    pooled, filled = pool_attention(full[:, kept[0]], (2, 4), 2, 1, rows=kept)
    assert filled.tolist() == [[True, True, False]]
    assert torch.allclose(pooled[0, 1, 1], full[0][[2, 5]][:, [1, 2, 5, 6]].sum(1).mean())
    assert torch.equal(pooled[0, 2], torch.zeros(3))


def test_pool_start_marks_cells_at_least_half_covered():
    start = torch.zeros(1, 9)
    start[0, [1, 2, 3]] = 1  # cell A: 2 of 4 patches; cell B: 1 of 4
    assert torch.equal(pool_start(start, (2, 4), 2, 1), torch.tensor([[0.0, 1.0, 0.0]]))
    cls = torch.zeros(1, 9)
    cls[0, 0] = 1
    assert torch.equal(pool_start(cls, (2, 4), 2, 1), torch.tensor([[1.0, 0.0, 0.0]]))


def test_unpool_scores_is_bilinear_upsampling_of_the_patch_cells():
    scores = torch.tensor([[5.0, 1.0, 3.0]])
    out = unpool_scores(scores, (2, 4), 2, 1)
    assert out[0, 0] == 5.0
    grid = torch.nn.functional.interpolate(torch.tensor([[[[1.0, 3.0]]]]), size=(2, 4), mode="bilinear",
                                           align_corners=False)
    assert torch.equal(out[0, 1:], grid.flatten())
    assert torch.equal(out[0, 1:5], torch.tensor([1.0, 1.5, 2.5, 3.0]))
