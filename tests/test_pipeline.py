"""The clip-major pipeline: durable per-clip records, resume after an interruption or a torn line, rows rebuilt from
records equal to an uninterrupted run's, random keep sets seeded by (seed, clip), and torchrun sharding."""

from __future__ import annotations

import csv
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from tokbench.ablate import AblationSpec, run_ablation
from tokbench.config import MethodConfig
from tokbench.engine import StreamingEngine
from tokbench.pipeline import RunSpec, run_one
from tokbench.records import RecordWriter, detections_from_json, detections_to_json, merge, read_records
from tokbench.tasks import ClassificationTask

TIMING = {"wall_s", "step_ms_median", "clip_batch"}


def _spec(**overrides) -> AblationSpec:
    base = dict(task="detect", model="vit_tiny_patch16_224", img_size=64, clips=3, frames=3, sampling=[1, 2],
                clip_batch=2, knobs={"window": [1], "keep_ratio": [0.5], "policy": ["rgtp", "random"]})
    return AblationSpec(**(base | overrides))


def _rows(out: Path) -> list[dict]:
    with open(out / "rows.csv", newline="") as f:
        return [{k: v for k, v in r.items() if k not in TIMING} for r in csv.DictReader(f)]


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory) -> list[dict]:
    out = tmp_path_factory.mktemp("whole")
    run_ablation(_spec(), out)
    return _rows(out)


def test_rows_carry_metrics_from_records(uninterrupted, tmp_path):
    assert [r["policy"] for r in uninterrupted] == ["dense"] * 2 + ["rgtp"] * 2 + ["random"] * 6
    assert all(r["error"] == "" for r in uninterrupted)
    assert all(r["frames_run"] == "9" for r in uninterrupted)
    pruned = [r for r in uninterrupted if r["policy"] != "dense"]
    assert all(0 <= float(r["top1_agreement"]) <= 100 and float(r["kl_to_dense"]) >= 0 for r in pruned)
    assert float(uninterrupted[0]["gmacs_per_clip"]) > float(uninterrupted[2]["gmacs_per_clip"])


@pytest.mark.parametrize("policy", ["rgtp", "random"])
def test_run_one_names_and_counts_a_configuration_like_the_grid(policy, uninterrupted):
    knobs = {"window": 1} if policy == "rgtp" else {}
    config = MethodConfig.from_preset("default", policy=policy, keep_ratio=0.5, seed=0, **knobs)
    records, row = run_one(RunSpec(config=config, model="vit_tiny_patch16_224", img_size=64, clips=3, frames=3))
    grid = next(r for r in uninterrupted if r["config_id"] == row["config_id"])
    assert [r["clip"] for r in records] == [0, 1, 2] and row["error"] == ""
    assert int(grid["frames_run"]) == row["frames_run"] == 9
    assert float(grid["kept_tokens_mean"]) == pytest.approx(row["kept_tokens_mean"], abs=1e-3)


def test_rows_do_not_depend_on_the_clip_batch(uninterrupted, tmp_path):
    run_ablation(_spec(clip_batch=1), tmp_path)
    rows = _rows(tmp_path)
    assert [r.keys() for r in rows] == [r.keys() for r in uninterrupted]
    for row, expected in zip(rows, uninterrupted, strict=True):
        for key, value in expected.items():  # KL to dense may differ in its last digits: a batched GEMM's order
            if key.startswith("kl_to_dense") and value:
                assert float(row[key]) == pytest.approx(float(value), rel=1e-4, abs=1e-6), key
            else:
                assert row[key] == value, key


def test_an_interrupted_run_resumes_to_the_rows_of_an_uninterrupted_one(uninterrupted, tmp_path):
    calls = []  # clips 0 and 1 run as one batch: the interrupt comes as the batch of clip 2 starts

    def stop_after_two_clips(label: str, clips: int) -> None:
        calls.append(label)
        if len(calls) == 3:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        run_ablation(_spec(), tmp_path, on_config=stop_after_two_clips)
    assert not (tmp_path / "rows.csv").exists()
    clips_done = {r["clip"] for r in read_records([tmp_path / "records.rank0.jsonl"])}
    assert clips_done == {0, 1}
    seen = []
    run_ablation(_spec(), tmp_path, on_config=lambda label, clips: seen.append(label))
    assert seen == ["clip 3/3"]  # only the clip in progress runs again
    assert _rows(tmp_path) == uninterrupted


def test_a_torn_record_line_is_dropped_and_its_clip_rerun(uninterrupted, tmp_path):
    run_ablation(_spec(), tmp_path)
    records = tmp_path / "records.rank0.jsonl"
    data = records.read_bytes()
    records.write_bytes(data[: len(data) - 40])  # killed mid-write of the last record
    (tmp_path / "rows.csv").unlink()
    run_ablation(_spec(), tmp_path)
    assert _rows(tmp_path) == uninterrupted
    assert records.read_bytes().count(b"\n") == data.count(b"\n")  # the torn line was cut, its pair written again


def test_finished_rows_are_not_rebuilt(tmp_path):
    first = run_ablation(_spec(clips=1, frames=2, sampling=[1]), tmp_path)
    assert len(first) == 5
    assert run_ablation(_spec(clips=1, frames=2, sampling=[1]), tmp_path) == []


def test_random_keep_sets_depend_on_seed_and_clip_not_on_order():
    torch.manual_seed(0)
    import timm

    model = timm.create_model("vit_tiny_patch16_224", img_size=64, num_classes=5).eval()
    engine = StreamingEngine(model, MethodConfig(policy="random", keep_ratio=0.5, seed=3), ClassificationTask())
    frame = torch.randn(1, 3, 64, 64)

    def kept(clip: int, engine=engine) -> list[torch.Tensor]:
        state = engine.new_state(clip)
        return [engine.step(frame, state).kept for _ in range(3)][1:]  # the first frame is full

    forward = {c: kept(c) for c in range(4)}
    backward = {c: kept(c) for c in reversed(range(4))}
    for c in range(4):
        assert all(torch.equal(a, b) for a, b in zip(forward[c], backward[c], strict=True))
    assert not torch.equal(forward[0][0], forward[1][0])
    other = StreamingEngine(model, MethodConfig(policy="random", keep_ratio=0.5, seed=4), ClassificationTask())
    assert not torch.equal(kept(0, other)[0], forward[0][0])


def test_record_writer_cuts_a_torn_tail_and_merge_prefers_finished(tmp_path):
    path = tmp_path / "records.rank0.jsonl"
    path.write_text('{"config_id": "a", "clip": 0, "error": "boom"}\n{"config_id": "a", "cl')
    write = RecordWriter(path)
    write({"config_id": "a", "clip": 0, "frames": []})
    records = list(read_records([path]))
    assert len(records) == 2
    assert merge(records)[("a", 0)] == {"config_id": "a", "clip": 0, "frames": []}


def test_detections_survive_json_exactly():
    dets = {"boxes": torch.rand(3, 4) * 300, "scores": torch.rand(3), "labels": torch.tensor([0, 4, 2])}
    back = detections_from_json(detections_to_json(dets))
    assert all(torch.equal(dets[k], back[k]) and back[k].dtype == dets[k].dtype for k in dets)
    empty = detections_from_json(detections_to_json({"boxes": torch.zeros(0, 4), "labels": torch.zeros(0).long()}))
    assert empty["boxes"].shape == (0, 4)


@pytest.mark.slow
def test_torchrun_on_two_processes_gives_the_rows_of_one(tmp_path):
    """The shipped detector (mAP50 over every frame of every clip, computed once by rank 0 from both ranks'
    records) and fidelity to dense: identical metric columns with 1 and 2 processes."""
    torchrun = shutil.which("torchrun", path=str(Path(sys.executable).parent))
    if torchrun is None:
        pytest.skip("torchrun not installed")
    grid = ["--videos", "2", "--frames", "2", "--window", "1", "--policy", "rgtp", "random", "--sampling", "1"]
    env = os.environ | {"OMP_NUM_THREADS": "1", "PYTHONPATH": str(Path(__file__).parents[1])}
    for world, out in ((1, tmp_path / "one"), (2, tmp_path / "two")):
        launcher = [sys.executable] if world == 1 else [torchrun, "--standalone", "--nproc-per-node", str(world)]
        proc = subprocess.run([*launcher, "-m", "tokbench", "ablate", *grid, "--out", str(out)], env=env,
                              capture_output=True, text=True, timeout=600)
        assert proc.returncode == 0, proc.stderr[-3000:]
    assert sorted(p.name for p in (tmp_path / "two").glob("records.rank*.jsonl")) == ["records.rank0.jsonl",
                                                                                     "records.rank1.jsonl"]
    assert {r["clip"] for r in read_records([tmp_path / "two" / "records.rank1.jsonl"])} == {1}
    one, two = _rows(tmp_path / "one"), _rows(tmp_path / "two")
    assert len(one) == 5 and all(r["error"] == "" and r["map50"] for r in one)
    assert all(r["map50_vs_dense"] for r in one[1:])
    assert one == two


def test_ranks_probing_one_output_folder_together_do_not_trip_over_each_other(tmp_path):
    """Every torchrun rank checks that ``--out`` is writable at the same moment: each must use its own probe."""
    code = ("import sys; from pathlib import Path; from tokbench.results import prepare_out_dir\n"
            "for _ in range(300): prepare_out_dir(Path(sys.argv[1]))")
    env = os.environ | {"PYTHONPATH": str(Path(__file__).parents[1])}
    procs = [subprocess.Popen([sys.executable, "-c", code, str(tmp_path)], env=env, stderr=subprocess.PIPE, text=True)
             for _ in range(2)]
    errors = [p.communicate(timeout=120)[1] for p in procs]
    assert [p.returncode for p in procs] == [0, 0], errors
    assert not list(tmp_path.iterdir())  # no probe left behind
