"""Keep-set selection, Gilbert order, reset patterns."""

import pytest
import torch

from tokbench.errors import ConfigError
from tokbench.selection import (
    gilbert_rank,
    kept_count,
    reset_pattern_indices,
    rollout_keep_indices,
    strides,
)

PAPER_CONFIGS = [  # N, rho, phi, beta, n (method.md section 3)
    (400, 0.75, 1, 0.25, 325),
    (400, 0.45, 1, 1 / 6, 217),
    (400, 0.30, 1, 0.05, 134),
    (400, 0.40, 0.5, 0.09, 102),
    (400, 0.24, 0.5, 0.03, 58),
    (400, 0.14, 0.5, 0, 28),
    (1764, 0.111, 1, 0, 196),
]


@pytest.mark.parametrize("n_tok,rho,phi,beta,expected", PAPER_CONFIGS)
@pytest.mark.parametrize("order", ["rank", "gilbert"])
def test_kept_counts_match_the_paper(n_tok, rho, phi, beta, expected, order):
    assert kept_count(n_tok, rho, phi, beta) == expected
    side = int(n_tok**0.5)
    kept = rollout_keep_indices(torch.rand(2, n_tok), (side, side), rho, phi, beta, order)
    assert kept.shape == (2, expected)
    assert (kept[:, 1:] > kept[:, :-1]).all()  # unique and ascending
    assert kept.min() >= 0 and kept.max() < n_tok


def test_python_round_half_to_even_and_float_products():
    assert strides(1.0, 0.4) == (1, 2)  # round(2.5) == 2
    assert round(0.14 * 400) == 56  # 56.00000000000001
    assert kept_count(400, 0.14, 1, 0) == 56


def test_foreground_is_the_top_scores_decimated_by_rank():
    scores = torch.arange(20, dtype=torch.float32).flip(0).unsqueeze(0)  # patch 0 best
    kept = rollout_keep_indices(scores, (4, 5), 0.5, fg_ratio=0.5)
    assert kept.tolist() == [[0, 2, 4, 6, 8]]
    kept = rollout_keep_indices(scores, (4, 5), 0.25, fg_ratio=1.0, bg_ratio=0.2)
    assert kept.tolist() == [[0, 1, 2, 3, 4, 5, 10, 15]]


def test_ties_break_by_raster_index():
    scores = torch.zeros(1, 16)
    scores[0, 9] = 1.0
    kept = rollout_keep_indices(scores, (4, 4), 0.25)
    assert kept.tolist() == [[0, 1, 2, 9]]


def test_keep_all_but_one():
    scores = torch.rand(1, 100)
    kept = rollout_keep_indices(scores, (10, 10), 0.99)
    assert kept.shape == (1, 99)
    assert int(scores.argmin()) not in kept.tolist()


@pytest.mark.parametrize("bad", [dict(keep_ratio=0), dict(keep_ratio=1.5), dict(fg_ratio=0), dict(bg_ratio=-0.1)])
def test_bad_ratios_are_rejected(bad):
    args = dict(keep_ratio=0.5, fg_ratio=1.0, bg_ratio=0.0) | bad
    with pytest.raises(ConfigError):
        kept_count(100, **args)


def test_zero_kept_tokens_is_rejected():
    with pytest.raises(ConfigError):
        kept_count(10, 0.01)


@pytest.mark.parametrize("grid", [(1, 1), (2, 3), (5, 7), (20, 20), (7, 12), (13, 4), (42, 42)])
def test_gilbert_is_a_path_of_8_neighbours(grid):
    h, w = grid
    rank = gilbert_rank(grid)
    assert sorted(rank.tolist()) == list(range(h * w))
    cells = rank.argsort()
    ys, xs = cells // w, cells % w
    assert ((ys[1:] - ys[:-1]).abs() <= 1).all() and ((xs[1:] - xs[:-1]).abs() <= 1).all()


def test_gilbert_starts_bottom_left():
    assert int(gilbert_rank((4, 4))[3 * 4 + 0]) == 0


@pytest.mark.parametrize(
    "grid,pattern,count",
    [((20, 20), "1in2", 200), ((5, 7), "1in2", 18), ((20, 20), "1in4", 100), ((5, 7), "1in4", 12),
     ((20, 20), "1in9", 49), ((7, 4), "1in9", 6)],
)
def test_reset_patterns(grid, pattern, count):
    idx = reset_pattern_indices(grid, pattern)
    assert idx.numel() == count
    h, w = grid
    rows, cols = idx // w, idx % w
    if pattern == "1in2":
        assert ((rows + cols) % 2 == 0).all()
    else:
        step = 2 if pattern == "1in4" else 3
        assert (rows % step == 0).all() and (cols % step == 0).all()
