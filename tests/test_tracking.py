"""Window-r tracking of the heatmap between frames."""

import pytest
import torch

from tokbench.tracking import track_scores, tracking_macs, window_offsets


def _shifted_pair(dy, dx, h=6, w=7, c=64, b=2, seed=0):
    gen = torch.Generator().manual_seed(seed)
    prev = torch.randn(b, h, w, c, generator=gen)
    cur = torch.roll(prev, shifts=(dy, dx), dims=(1, 2))  # content moved by (dy, dx)
    scores = torch.rand(b, h * w, generator=gen)
    return scores, prev.reshape(b, h * w, c), cur.reshape(b, h * w, c), (h, w)


@pytest.mark.parametrize("similarity", ["dot", "cosine"])
@pytest.mark.parametrize("window,dy,dx", [(1, 1, 1), (1, -1, 0), (2, 2, -1), (3, 0, 3)])
def test_known_shift_is_recovered(window, dy, dx, similarity):
    scores, prev, cur, (h, w) = _shifted_pair(dy, dx)
    out = track_scores(scores, prev, cur, (h, w), window, similarity).reshape(2, h, w)
    src = scores.reshape(2, h, w)
    ys, xs = slice(max(dy, 0), h + min(dy, 0)), slice(max(dx, 0), w + min(dx, 0))
    ys0, xs0 = slice(max(-dy, 0), h + min(-dy, 0)), slice(max(-dx, 0), w + min(-dx, 0))
    assert torch.equal(out[:, ys, xs], src[:, ys0, xs0])


def test_window_zero_is_identity():
    scores, prev, cur, grid = _shifted_pair(1, 1)
    assert torch.equal(track_scores(scores, prev, cur, grid, 0), scores)


def test_static_frames_keep_every_score():
    scores, prev, _, grid = _shifted_pair(0, 0)
    assert torch.equal(track_scores(scores, prev, prev, grid, 2), scores)


def test_exact_ties_go_to_the_zero_offset_and_never_out_of_grid():
    b, h, w, c = 1, 4, 4, 8
    same = torch.ones(b, h * w, c)  # every candidate ties (padding-like embeddings)
    scores = torch.arange(h * w, dtype=torch.float32).unsqueeze(0)
    assert torch.equal(track_scores(scores, same, same, (h, w), 1), scores)


def test_reference_sentinel_ties_take_the_first_in_grid_offset():
    b, h, w, c = 1, 4, 4, 8
    same = torch.ones(b, h * w, c)
    scores = torch.arange(h * w, dtype=torch.float32).unsqueeze(0)
    out = track_scores(scores, same, same, (h, w), 1, bounds="sentinel").reshape(h, w)
    assert out[2, 2] == scores[0, 1 * w + 1]  # offset (-1, -1)
    assert out[0, 3] == scores[0, 2]  # (0, -1) is the first in-grid offset on the top row


def test_reference_sentinel_out_of_grid_winner_copies_token_zero():
    b, h, w, c = 1, 4, 4, 8
    cur, prev = torch.ones(b, h * w, c), -100 * torch.ones(b, h * w, c)  # in-grid sims -800 < sentinel -100
    scores = torch.arange(1, h * w + 1, dtype=torch.float32).unsqueeze(0)
    out = track_scores(scores, prev, cur, (h, w), 1, bounds="sentinel").reshape(h, w)
    assert out[0, 2] == scores[0, 0] and out[3, 3] == scores[0, 0]
    assert out[1, 1] == scores[0, 0]  # interior: (-1, -1) wins the tie and lands on patch 0
    assert out[2, 2] == scores[0, 5]
    masked = track_scores(scores, prev, cur, (h, w), 1).reshape(h, w)
    assert torch.equal(masked, scores.reshape(h, w))  # mask mode: all in-grid tie -> zero offset


def test_min_gain_threshold_forces_zero_offset():
    scores, prev, cur, grid = _shifted_pair(1, 0, c=16)
    forced = track_scores(scores, prev, cur, grid, 1, "cosine", min_gain_pct=1e9)
    assert torch.equal(forced, scores)


def test_offsets_and_cost():
    offs = window_offsets(1)
    assert offs[0] == (-1, -1) and offs[len(offs) // 2] == (0, 0) and len(offs) == 9
    assert tracking_macs(1764, 768, 1) == 12_192_768  # 12.2 M at 672 px (method.md section 4)
    assert tracking_macs(1764, 768, 0) == 0
