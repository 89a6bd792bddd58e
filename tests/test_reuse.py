"""Full frames run once per batch and reused by every job with the same full-frame signature: every record equals
the one its job writes run alone (timings aside), the reuse really happens, and the store frees what it holds."""

from __future__ import annotations

import dataclasses

import pytest
import torch
from test_lockstep import _clips, _strip, tiny_detector  # noqa: F401  (fixture)

from tokbench import reuse
from tokbench.config import MethodConfig
from tokbench.engine import FullFrame
from tokbench.jobs import resolve
from tokbench.pipeline import run_pair, stream
from tokbench.policies import POLICIES
from tokbench.reuse import BUDGET_BYTES, SharedFrames


def _configs() -> list[MethodConfig]:
    base = {"keep_ratio": 0.25, "reset_every": 3}
    configs = [MethodConfig.from_preset("default", policy=n, **base) for n, p in POLICIES.items()
               if p.applies_to("detect")]
    return configs + [MethodConfig.from_preset("default", policy="rgtp", window=w, **base) for w in (0, 2)] + [
        MethodConfig.from_preset("default", policy="random", seed=1, **base)]


def test_shared_full_frames_give_every_job_its_own_records(tiny_detector):  # noqa: F811
    data = _clips(3, frames=7, size=160)
    jobs = [resolve(tiny_detector, c, s, {}) for c in _configs() for s in (1, 2)]
    shared: dict[tuple[str, int], dict] = {}
    stream(tiny_detector, data, jobs, range(3), clip_batch=3,
           emit=lambda r: shared.__setitem__((r["config_id"], r["clip"]), r))
    assert not any(r.get("error") for r in shared.values())
    reused: dict[tuple[str, int], int] = {}
    for job in jobs:
        engine = tiny_detector.engine(job.config)
        key = (job.config.policy, job.sampling)
        for c in range(3):
            alone, _ = run_pair(tiny_detector, engine, data[c], c, job.sampling, None, None)
            record = shared[job.config_id, c]
            assert {k: v for k, v in _strip(record).items() if k not in ("config_id", "clip")} == _strip(alone)
            reused[key] = reused.get(key, 0) + sum(f["reused"] for f in record["frames"])
    # dense at 1/1 runs all 7 frames; at 1/2 (frames 0, 2, 4, 6) it reuses them all
    assert reused["dense", 1] == 0 and reused["dense", 2] == 4 * 3
    # the baselines reuse dense's full frames (t = 0, 3, 6 at 1/1; t = 0, 3 at 1/2: frames 0 and 6)
    for name in ("grid", "cls-attn", "eventful", "boxmask"):
        assert reused[name, 1] == 3 * 3 and reused[name, 2] == 2 * 3
    assert reused["random", 1] == 2 * 3 * 3 and reused["random", 2] == 2 * 2 * 3  # two seeds
    # the first RGTP window runs its full frames (its rollout needs attention rows); windows 0 and 2 reuse them,
    # and at 1/2 all three reuse them (frames 0 and 6 ran at 1/1)
    assert reused["rgtp", 1] == 2 * 3 * 3 and reused["rgtp", 2] == 3 * 2 * 3


def _frame(tag: float) -> FullFrame:
    t = torch.full((1, 2), tag)
    return FullFrame(None, None, None, 2, None, (1, 2), t, None, {0: (t.clone(), t.clone())}, {}, {0: t.clone()}, t)


def test_past_its_budget_the_store_keeps_frames_without_buffers():
    store = SharedFrames(budget=1)
    for key in ("a", "b"):
        for buffers in (False, True, True):
            store.expect(key, buffers)
        assert store.take(key, False) is None
    assert store.wanted("a") == (True, True)
    store.put("a", _frame(1.0), 3.0, True)
    assert store.held_bytes == 4 * 2 * 4  # k, v, rows and output: 2 float32 each
    assert store.wanted("b") == (True, False)  # over budget: b is kept for its predictions only
    store.put("b", dataclasses.replace(_frame(2.0), kv={}, rows={}, output=None), 3.0, False)
    assert store.take("b", True) is None  # a pruning user finds no buffers: it runs the frame itself
    assert store.take("a", True).frame.kv and store.take("a", True).own
    assert store.held_bytes == 0 and len(store) == 1  # b waits for its last user


def test_a_tiny_budget_changes_which_frames_are_reused_not_the_records(tiny_detector, monkeypatch):  # noqa: F811
    data = _clips(2, frames=7, size=160)
    jobs = [resolve(tiny_detector, c, 1, {}) for c in _configs()]
    runs = {}
    for budget in (BUDGET_BYTES, 1):
        monkeypatch.setattr(reuse, "BUDGET_BYTES", budget)
        out: dict = {}
        stream(tiny_detector, data, jobs, range(2), clip_batch=2,
               emit=lambda r, out=out: out.__setitem__((r["config_id"], r["clip"]), r))
        runs[budget] = out
    assert _strip(runs[1]) == _strip(runs[BUDGET_BYTES])
    count = {b: sum(f["reused"] for r in out.values() for f in r["frames"]) for b, out in runs.items()}
    assert 0 < count[1] < count[BUDGET_BYTES]


def test_the_store_keeps_frames_only_for_the_users_still_to_come():
    store = SharedFrames()
    for buffers in (True, False, True):
        store.expect("k", buffers)
    assert store.take("k", True) is None  # the first user runs the frame
    assert store.wanted("k") == (True, True)
    frame = _frame(1.0)
    store.put("k", frame, 12.0, True)
    dense = store.take("k", False)
    assert dense.ms == 12.0 and not dense.own and dense.frame.kv  # buffers stay for the pruning user to come
    last = store.take("k", True)
    assert last.own and last.frame is frame and len(store) == 0
    store.put("k", frame, 1.0, True)  # nobody is left to use it: not stored
    assert len(store) == 0


def test_buffers_are_dropped_once_no_pruning_user_is_left():
    store = SharedFrames()
    for buffers in (True, True, False):
        store.expect("k", buffers)
    store.take("k", True)
    store.put("k", _frame(2.0), 5.0, True)
    pruning = store.take("k", True)
    assert pruning.own and pruning.frame.kv  # the last pruning user keeps the buffers ...
    held = store._frames["k"].frame
    assert held.kv == {} and held.rows == {} and held.output is None  # ... and the store lets them go
    assert store.held_bytes == 0
    assert store.take("k", False).frame.heatmap is None and len(store) == 0


@pytest.mark.parametrize("option", [{"policy": "rgtp"}, {"sdpa_flops": "explicit"}, {"kv_reuse": "off"},
                                    {"prune_block": 1}])
def test_signatures_tell_apart_what_changes_a_full_frame(tiny_detector, option):  # noqa: F811
    base = {"policy": "random"}
    signature = tiny_detector.engine(MethodConfig(**base)).full_signature()
    assert tiny_detector.engine(MethodConfig(**(base | option))).full_signature() != signature
    same = MethodConfig(policy="grid", keep_ratio=0.5, window=3, seed=4, reset_every=5)
    assert tiny_detector.engine(same).full_signature() == signature
