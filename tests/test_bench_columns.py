"""``tokbench bench``'s comparison columns on hand numbers (``bench.comparison_columns``, no timing)."""

from __future__ import annotations

import pandas as pd
import pytest
import torch

import tokbench  # noqa: F401  (installs the torchvision shim before timm is imported)
from tokbench.bench import comparison_columns
from tokbench.report import BENCH_COLUMNS, bench_table


def _row(policy: str, keep: float | None, pruned_ms: float | None) -> dict:
    return {"policy": policy, "keep": keep, "pruned_ms": pruned_ms}


def test_method_ms_is_the_pruned_step_over_grids_and_speedup_vs_random_the_ratio_to_random():
    rows = [_row("dense", None, None), _row("rgtp", 0.25, 20.0), _row("grid", 0.25, 16.0),
            _row("random", 0.25, 17.0)]
    dense, rgtp, grid, random = comparison_columns(rows)
    assert rgtp == {"method_ms": 4.0, "method_pct": 20.0, "speedup_vs_random": 0.85}
    assert grid == {"method_ms": 0.0, "method_pct": 0.0, "speedup_vs_random": pytest.approx(1.0625, abs=1e-3)}
    assert random == {"method_ms": 1.0, "method_pct": pytest.approx(5.88), "speedup_vs_random": 1.0}
    assert dense == {"method_ms": None, "method_pct": None, "speedup_vs_random": None}


def test_without_grid_method_ms_falls_back_to_random_at_the_same_budget_only():
    rows = [_row("rgtp", 0.25, 20.0), _row("random", 0.25, 16.0), _row("rgtp", 0.111, 12.0),
            _row("grid", 0.111, 9.0), _row("cls-attn", 0.5, 30.0)]
    at_25, random_25, at_111, grid_111, alone = comparison_columns(rows)
    assert at_25 == {"method_ms": 4.0, "method_pct": 20.0, "speedup_vs_random": 0.8}
    assert random_25["method_ms"] == 0.0
    assert at_111 == {"method_ms": 3.0, "method_pct": 25.0, "speedup_vs_random": None}  # no random at 0.111
    assert grid_111["speedup_vs_random"] is None
    assert alone == {"method_ms": None, "method_pct": None, "speedup_vs_random": None}  # neither reference at 0.5


def test_a_policy_row_without_pruned_frames_has_no_method_time():
    rows = [_row("rgtp", 1.0, None), _row("grid", 1.0, 10.0)]
    assert comparison_columns(rows)[0] == {"method_ms": None, "method_pct": None, "speedup_vs_random": None}


def test_the_bench_table_shows_the_comparison_columns_and_none_of_the_old_names():
    for column in ("method_ms", "method_pct", "speedup_vs_dense", "gmacs_ratio_vs_dense", "block_efficiency",
                   "speedup_vs_random", "timed_parts_ms", "timed_parts_pct"):
        assert column in BENCH_COLUMNS
    assert not {"overhead_ms", "overhead_pct", "block_slowdown"} & set(BENCH_COLUMNS)
    table = bench_table(pd.DataFrame([{"name": "rgtp keep=0.25", "method_ms": 4.0, "policy": "rgtp"}]))
    assert list(table.columns) == ["name", "method_ms"]


def test_configurations_are_timed_frame_by_frame_each_with_its_own_state():
    from tokbench.bench import Entry, _time_repeat

    calls = []

    def entry(name: str) -> Entry:
        def step(frame, state):
            state.append(int(frame))
            calls.append((name, list(state)))
            return "full"
        return Entry(name, "dense", None, None, step, lambda clip: [])

    out = _time_repeat([entry("a"), entry("b")], torch.arange(3).view(3, 1), torch.device("cpu"), 0)
    assert calls == [("a", [0]), ("b", [0]), ("a", [0, 1]), ("b", [0, 1]), ("a", [0, 1, 2]), ("b", [0, 1, 2])]
    assert [len(out[n][0]["full"]) for n in "ab"] == [3, 3]
