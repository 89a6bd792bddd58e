"""Paired comparisons over the same clip resamples: who is compared with whom, the pooling of seeded baselines,
and the intervals rows carry."""

from __future__ import annotations

import numpy as np
import pytest

from tokbench.intervals import paired
from tokbench.paired import paired_rows


def _row(cid: str, policy: str, value: float, window: int = 1, sampling: int = 1, seed: int = 0) -> dict:
    return {"config_id": cid, "policy": policy, "window": window, "keep_ratio": 0.25, "reset_every": 8,
            "sampling": sampling, "seed": seed, "map50": value, "error": float("nan")}


def test_pruned_rows_against_dense_and_rgtp_against_each_baseline_at_its_budget():
    rows = [_row("d", "dense", 90.0), _row("r0", "rgtp", 70.0, window=0), _row("r1", "rgtp", 80.0),
            _row("g", "grid", 60.0), _row("x0", "random", 50.0, seed=0), _row("x1", "random", 54.0, seed=1),
            _row("d4", "dense", 91.0, sampling=4), _row("g4", "grid", 40.0, sampling=4),
            _row("bad", "boxmask", 1.0) | {"error": "RuntimeError: boom"}]
    rng = np.random.default_rng(0)
    samples = {r["config_id"]: {"map50": rng.normal(r["map50"], 1.0, 200)} for r in rows}
    lines = {(p["a"], p["b"], p["sampling"]): p for p in paired_rows(rows, samples)}
    assert set(lines) == {("rgtp r=0", "dense", 1), ("rgtp r=1", "dense", 1), ("grid", "dense", 1),
                          ("random", "dense", 1), ("rgtp r=0", "grid", 1), ("rgtp r=1", "grid", 1),
                          ("rgtp r=0", "random", 1), ("rgtp r=1", "random", 1), ("grid", "dense", 4)}
    pooled = lines[("rgtp r=1", "random", 1)]
    assert pooled["diff"] == pytest.approx(80.0 - 52.0) and pooled["seeds_b"] == 2  # the seeds' mean
    expected = paired(samples["r1"]["map50"], (samples["x0"]["map50"] + samples["x1"]["map50"]) / 2)
    assert (pooled["ci_low"], pooled["ci_high"]) == pytest.approx(expected)
    assert pooled["significant"] and lines[("rgtp r=1", "dense", 1)]["diff"] == pytest.approx(-10.0)


def test_a_difference_within_noise_is_not_significant():
    rows = [_row("d", "dense", 90.0), _row("r", "rgtp", 89.9)]
    rng = np.random.default_rng(1)
    common = rng.normal(0, 5, 500)  # the clips' shared difficulty cancels in a paired difference ...
    samples = {"d": {"map50": 90.0 + common + rng.normal(0, 1, 500)},
               "r": {"map50": 89.9 + common + rng.normal(0, 1, 500)}}
    [line] = paired_rows(rows, samples)
    assert not line["significant"] and line["ci_low"] < 0 < line["ci_high"]
    assert line["ci_high"] - line["ci_low"] < 7  # ... so the paired interval is narrower than the rows' own



def test_the_markdown_table_keeps_one_line_per_budget(tmp_path):
    import pandas as pd

    from tokbench.report import paired_table

    rows = [_row("d", "dense", 90.0), _row("a", "rgtp", 80.0), _row("b", "rgtp", 70.0) | {"keep_ratio": 0.1}]
    rng = np.random.default_rng(2)
    samples = {r["config_id"]: {"map50": rng.normal(r["map50"], 1.0, 100)} for r in rows}
    pd.DataFrame(paired_rows(rows, samples)).to_csv(tmp_path / "paired.csv", index=False)
    table = paired_table(tmp_path, "map50")
    assert list(table.index) == ["rgtp r=1 − dense, keep 0.25", "rgtp r=1 − dense, keep 0.1"]
    assert table.iloc[0, 0].startswith("-10.0") and table.iloc[1, 0].startswith("-20.0")
