"""flops, report and ablate on user models and video, end to end through ``cli.main()`` (tiny models, tiny data)."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import av
import numpy as np
import pytest
import timm
import torch

from tokbench.flops import vit_closed_form_gmacs
from tokbench.flops_ref import ViTArch

TINY = ["--model", "vit_tiny_patch16_224", "--img-size", "64"]



def _error(code: int, err: str) -> str:
    assert code == 1, err
    assert "Traceback" not in err
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error:"), err
    return lines[0]


def _write_video(path: Path, frames: int = 6, size: int = 64) -> Path:
    with av.open(str(path), "w") as container:
        stream = container.add_stream("libx264", rate=10)
        stream.width = stream.height = size
        stream.pix_fmt = "yuv420p"
        for t in range(frames):
            image = np.full((size, size, 3), 60, np.uint8)
            image[16:32, 4 * t : 4 * t + 16] = 220  # a square moving right
            for packet in stream.encode(av.VideoFrame.from_ndarray(image, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return path


# ------------------------------------------------------------------------------------------------------------ flops


def test_flops_json_rows_on_a_tiny_timm_vit(run_cli):
    code, out, err = run_cli("flops", *TINY, "--keep", "0.25", "8", "--format", "json")
    assert code == 0, err
    rows = json.loads(out)
    assert [r["keep_tokens"] for r in rows] == [16, 4, 8]
    model = timm.create_model("vit_tiny_patch16_224", img_size=64)
    arch = ViTArch(depth=12, dim=192, heads=3, mlp_dim=768, grid=(4, 4), prefix=1)
    assert rows[0]["gmacs_full"] == pytest.approx(vit_closed_form_gmacs(arch, num_classes=model.num_classes),
                                                  rel=1e-4)
    assert rows[0]["unit"] == "clip"
    assert rows[0]["gmacs_per_clip"] == pytest.approx(32 * rows[0]["gmacs_full"], abs=1e-3)
    for row in rows[1:]:  # a timm classifier: 32 steps per clip, t = 0 full, pattern resets at 8, 16, 24
        assert max(row["gmacs_pruned"], row["gmacs_pattern"]) < row["gmacs_full"]
        steps = row["gmacs_full"] + 3 * row["gmacs_pattern"] + 28 * row["gmacs_pruned"]
        assert row["gmacs_per_clip"] == pytest.approx(steps, abs=1e-4)
        assert row["overhead_gmacs_tracking"] == pytest.approx(28 * 16 * 9 * 192 / 1e9)
        assert row["overhead_gmacs_rollout"] > 0 and row["overhead_gmacs_match"] > 0


@pytest.mark.slow
def test_flops_vit_base_dense_reads_17_58(run_cli):
    code, out, err = run_cli("flops", "--model", "vit_base_patch16_224", "--format", "json")
    assert code == 0, err
    assert round(json.loads(out)[0]["gmacs_full"], 2) == 17.58


def test_flops_paper_convention_reproduces_vitdet_b_672(run_cli):
    common = ["flops", "--model", "vitdet_b", "--img-size", "672", "--keep", "196", "--preset", "reference",
              "--convention", "paper", "--format", "json"]
    code, out, err = run_cli(*common, "--window", "1")
    assert code == 0, err
    dense, pruned = json.loads(out)
    assert round(dense["gmacs_per_frame"], 2) == 174.50
    assert (round(pruned["gmacs_full"], 2), round(pruned["gmacs_pruned"], 2)) == (174.84, 28.23)
    table1 = []
    for r in range(4):
        _, out, _ = run_cli(*common, "--window", str(r), "--full-fraction", "0.12653")
        table1.append(round(json.loads(out)[1]["gmacs_per_frame"], 2))
    assert table1 == [46.77, 46.78, 46.80, 46.82]


def test_flops_csv_and_table_formats(run_cli):
    code, out, _ = run_cli("flops", *TINY, "--format", "csv")
    assert code == 0 and out.splitlines()[0].startswith("model,kind,convention,sdpa_flops,unit,policy,keep_ratio")
    code, out, _ = run_cli("flops", *TINY, "--by-operator")
    assert code == 0 and "not counted" in out and "linear" in out


# -------------------------------------------------------------------------------------------- models and weights


def test_unknown_model_suggests_close_names(run_cli):
    line = _error(*run_cli("flops", "--model", "vit_tiny_patch16_22")[::2])
    assert "vit_tiny_patch16_224" in line


@pytest.mark.parametrize("case", ["missing", "corrupt", "wrong-keys", "wrong-shape", "bad-suffix"])
def test_bad_checkpoints_are_one_line_errors(case, tmp_path, run_cli):
    model = timm.create_model("vit_tiny_patch16_224", img_size=64, num_classes=0)
    path = tmp_path / "weights.pth"
    if case == "corrupt":
        path.write_bytes(b"not a checkpoint")
    elif case == "wrong-keys":
        torch.save({"model": {"encoder.weight": torch.zeros(2)}}, path)
    elif case == "wrong-shape":
        state = model.state_dict()
        state["pos_embed"] = torch.zeros(1, 5, 192)
        torch.save(state, path)
    elif case == "bad-suffix":
        path = tmp_path / "weights.txt"
        path.write_text("x")
    line = _error(*run_cli("flops", *TINY, "--checkpoint", str(path))[::2])
    assert {"missing": "does not exist", "corrupt": "cannot read", "wrong-keys": "missing keys",
            "wrong-shape": "shape mismatch", "bad-suffix": "unknown format"}[case] in line


def test_checkpoint_loads_into_the_model_it_fits(tmp_path):
    from tokbench.models.zoo import load_model

    source = timm.create_model("vit_tiny_patch16_224", img_size=64, num_classes=7)
    torch.save({"state_dict": {f"module.{k}": v for k, v in source.state_dict().items()}}, tmp_path / "w.pth")
    loaded = load_model("vit_tiny_patch16_224", tmp_path / "w.pth", 64)
    assert loaded.kind == "classify" and loaded.model.num_classes == 7
    assert torch.equal(loaded.model.pos_embed, source.pos_embed)
    from safetensors.torch import save_file

    headless = timm.create_model("vit_tiny_patch16_224", img_size=64, num_classes=0)
    save_file(headless.state_dict(), str(tmp_path / "w.safetensors"))
    assert load_model("vit_tiny_patch16_224", tmp_path / "w.safetensors", 64).kind == "features"


# ------------------------------------------------------------------------------------------ ablate on user video


@pytest.fixture(scope="module")
def videos(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("videos")
    _write_video(folder / "a.mp4")
    _write_video(folder / "b.mp4", frames=5)
    return folder


def _rows(folder: Path) -> list[dict]:
    with open(folder / "rows.csv", newline="") as f:
        return list(csv.DictReader(f))


@pytest.mark.parametrize("checkpoint_head", [7, 0], ids=["classifier", "headless"])
def test_ablate_on_a_video_folder_scores_fidelity_and_resumes(checkpoint_head, videos, tmp_path, run_cli):
    weights = tmp_path / "w.pth"
    torch.save(timm.create_model("vit_tiny_patch16_224", img_size=64, num_classes=checkpoint_head).state_dict(),
               weights)
    out = tmp_path / "out"
    args = ["ablate", *TINY, "--checkpoint", str(weights), "--data", str(videos), "--window", "1", "--keep", "0.25",
            "--policy", "dense", "rgtp", "random", "--sampling", "1", "--frames", "4", "--videos", "2",
            "--out", str(out)]
    code, stdout, err = run_cli(*args)
    assert code == 0, err
    rows = _rows(out)
    assert [r["policy"] for r in rows] == ["dense", "rgtp", "random", "random", "random"]
    metric = "top1_agreement" if checkpoint_head else "cosine_pooled"
    assert all(r["error"] == "" for r in rows)
    values = [float(r[metric]) for r in rows[1:]]
    assert all(0 <= v <= 100 for v in values) and metric in stdout
    assert rows[1]["frames_run"] == "8" and rows[1]["keep_tokens"] == "4"
    assert (out / "ablation.png").stat().st_size > 0 and json.loads((out / "meta.json").read_text())["data"]
    meta = (out / "meta.json").read_text()
    code, _, err = run_cli(*args)  # everything is finished: nothing runs again
    assert code == 0 and len(_rows(out)) == 5
    assert (out / "meta.json").read_text() == meta  # the provenance of the run that made the rows stays


@pytest.mark.parametrize("data", ["missing-folder", "empty-folder", "corrupt-video", "unknown-sample"])
def test_bad_video_data_is_a_one_line_error(data, tmp_path, run_cli):
    where = {"missing-folder": str(tmp_path / "nope"), "empty-folder": str(tmp_path / "empty"),
             "corrupt-video": str(tmp_path / "bad"), "unknown-sample": "sample:bikez"}[data]
    (tmp_path / "empty").mkdir()
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / "x.mp4").write_text("not a video")
    code, _, err = run_cli("ablate", *TINY, "--data", where, "--policy", "rgtp", "--window", "1",
                         "--sampling", "1", "--videos", "1", "--frames", "2", "--out", str(tmp_path / "out"))
    line = _error(code, err)
    assert {"missing-folder": "nope", "empty-folder": "no video", "corrupt-video": "x.mp4",
            "unknown-sample": "bikes"}[data] in line


def test_bench_runs_a_windowed_model(run_cli):
    code, out, err = run_cli("bench", "--model", "samvit_base_patch16", "--img-size", "64", "--keep", "0.25",
                             "--policy", "rgtp", "--frames", "3", "--repeats", "1", "--batch", "1", "--format", "json")
    assert code == 0, err
    rows = json.loads(out)
    assert [r["keep_tokens"] for r in rows] == [16, 16, 16, 4] and rows[3]["frame_kind"] == "pruned"
    assert rows[3]["block_efficiency"] is None and rows[3]["gmacs_ratio_vs_dense"] > 1
    assert rows[3]["method_ms"] is None and rows[3]["speedup_vs_random"] is None  # neither grid nor random ran


def test_ablate_on_a_kinetics_csv_scores_top1_with_vivit(tmp_path, run_cli):
    (tmp_path / "clips").mkdir()
    _write_video(tmp_path / "clips" / "abc_000000_000010.mp4", frames=8)
    labels = tmp_path / "clips" / "val.csv"
    labels.write_text("label,youtube_id,time_start,time_end\n399,abc,0,10\n")  # integer labels: 0..399 = 400 classes
    out = tmp_path / "out"
    code, stdout, err = run_cli("ablate", "--model", "vivit_b_k400", "--data", f"csv:{labels}", "--policy", "dense",
                                "rgtp", "--window", "1", "--keep", "0.25", "--sampling", "1", "--frames", "2",
                                "--views", "1", "--out", str(out))
    assert code == 0, err
    rows = _rows(out)
    assert [r["policy"] for r in rows] == ["dense", "rgtp"] and all(r["error"] == "" for r in rows)
    assert {r["top1"] for r in rows} <= {"0.0", "100.0"} and rows[1]["frames_run"] == "2"  # 2 tubelet steps
    assert rows[1]["keep_tokens"] == "49"
    from tokbench.ablate import AblationSpec, open_data
    from tokbench.models.zoo import load_model

    loaded = load_model("vivit_b_k400")
    assert open_data(AblationSpec(data=f"csv:{labels}"), loaded).views == 12  # the protocol's default
    assert len(open_data(AblationSpec(data=f"csv:{labels}", views=1), loaded)) == 1


def test_views_apply_to_labelled_classification_only(tmp_path, run_cli):
    code, _, err = run_cli("ablate", *TINY, "--data", "sample:carphone", "--views", "12", "--out", str(tmp_path / "o"))
    assert code == 1 and "--views 12 applies to labelled video classification" in err


def test_labelled_data_must_match_the_model_classes(tmp_path, run_cli):
    from test_video_data import write_vid

    write_vid(tmp_path / "vid")
    code, _, err = run_cli("ablate", "--data", f"vid:{tmp_path / 'vid'}", "--policy", "rgtp", "--window", "1",
                           "--sampling", "1", "--videos", "1", "--out", str(tmp_path / "out"))
    assert "predicts 6 classes but the data names 30" in _error(code, err)


def test_imagenet_vid_runs_with_a_30_class_detector(tmp_path):
    from test_video_data import write_vid

    from tokbench.ablate import AblationSpec, open_data
    from tokbench.config import MethodConfig
    from tokbench.models.detector import DetectorSpec, ViTDetector
    from tokbench.models.zoo import wrap_model
    from tokbench.pipeline import evaluate

    write_vid(tmp_path / "vid")
    loaded = wrap_model("vid-det", ViTDetector(DetectorSpec(num_classes=30, img_size=64, depth=2)))
    data = open_data(AblationSpec(task="detect", data=f"vid:{tmp_path / 'vid'}", clips=1), loaded)
    assert data.frames_dir.name == "val" and data[0].frames.shape == (4, 3, 64, 64)
    [result] = evaluate(loaded, data, [MethodConfig(keep_ratio=0.25)])
    assert len(result.frames) == 4 and 0 <= result.row["map50"] <= 100


# ------------------------------------------------------------------------------------------------------- report


def test_report_reads_folders_and_writes_tables_and_plots(videos, tmp_path, run_cli):
    out = tmp_path / "run"
    code, _, err = run_cli("ablate", *TINY, "--data", str(videos), "--window", "0", "1",
                         "--policy", "rgtp", "grid", "--sampling", "1", "2", "--frames", "3", "--videos", "1",
                         "--out", str(out))
    assert code == 0, err
    code, stdout, err = run_cli("report", str(out), "--out", str(tmp_path / "report"))
    assert code == 0, err
    text = (tmp_path / "report" / "report.md").read_text()
    assert "rgtp r=0" in text and "rgtp r=1" in text and "grid" in text and "dense" in text
    assert "cosine_pooled" in text or "top1_agreement" in text
    assert (tmp_path / "report" / "pareto_0.png").exists() and (tmp_path / "report" / "window_0.png").exists()
    rows = _rows(out)
    pruned = [r for r in rows if r["policy"] != "dense"]
    metric = "top1_agreement"  # a timm classifier on unlabelled video: fidelity to dense
    assert all(float(r[f"{metric}_ci_low"]) <= float(r[metric]) <= float(r[f"{metric}_ci_high"]) for r in pruned)
    paired = list(csv.DictReader((out / "paired.csv").open()))
    # fidelity is itself a comparison with dense (dense rows have none): RGTP against the baseline only
    assert {(p["a"], p["b"]) for p in paired if p["metric"] == metric} == {("rgtp r=0", "grid"), ("rgtp r=1", "grid")}
    assert "Paired differences" in (out / "ablation.md").read_text()
    line = _error(*run_cli("report", str(tmp_path / "nothing-here"))[::2])
    assert "rows.csv" in line


# -------------------------------------------------------------------------------------------------------- bench


def test_bench_smoke_on_a_tiny_model_gives_well_formed_rows(tmp_path, run_cli):
    code, out, err = run_cli("bench", *TINY, "--keep", "0.25", "--policy", "rgtp", "--policy",
                           "random", "--frames", "4", "--repeats", "1", "--batch", "2", "--format", "json",
                           "--out", str(tmp_path / "bench"))
    assert code == 0, err
    rows = json.loads(out)
    assert [r["name"] for r in rows] == ["timm forward_features", "timm forward_features (explicit attention)",
                                         "tokbench dense", "rgtp keep=0.25", "random keep=0.25"]
    for row in rows:
        assert {"policy", "keep_tokens", "step_ms_median", "speedup_vs_dense", "gmacs_ratio_vs_dense",
                "timed_parts_pct", "method_ms", "method_pct", "speedup_vs_random", "block_efficiency"} <= row.keys()
        assert not {"overhead_ms", "overhead_pct", "block_slowdown"} & row.keys()
        assert row["step_ms_median"] > 0 and row["step_ms_iqr"] >= 0
    dense, rgtp, random = rows[2], rows[3], rows[4]
    assert dense["speedup_vs_dense"] == 1.0 and dense["keep_tokens"] == 16
    assert dense["method_ms"] is None and dense["speedup_vs_random"] is None
    assert rgtp["frame_kind"] == "pruned" and rgtp["keep_tokens"] == 4 and rgtp["steps_timed"] == 3
    assert rgtp["gmacs_ratio_vs_dense"] > 1
    assert rgtp["timed_parts_ms"] > 0 and random["timed_parts_ms"] < rgtp["timed_parts_ms"]
    # no grid: method_ms is measured against random at the same keep
    assert rgtp["method_ms"] == pytest.approx(rgtp["step_ms_median"] - random["step_ms_median"], abs=2e-3)
    assert rgtp["speedup_vs_random"] == pytest.approx(random["step_ms_median"] / rgtp["step_ms_median"], abs=5e-3)
    assert random["method_ms"] == 0 and random["speedup_vs_random"] == 1.0
    assert dense["block_efficiency"] == 1.0 and rgtp["block_efficiency"] > 0
    assert (tmp_path / "bench" / "rows.csv").exists() and (tmp_path / "bench" / "meta.json").exists()
    code, _, err = run_cli("report", str(tmp_path / "bench"), "--out", str(tmp_path / "report"))
    assert code == 0, err
    text = (tmp_path / "report" / "report.md").read_text()
    assert "wall-clock" in text and "speedup_over_gmacs_ratio" in text and "rgtp keep=0.25" in text
    assert "method_ms" in text and "block_efficiency" in text and "speedup_vs_random" in text


def test_bench_logs_each_timed_clip_and_an_interrupted_run_resumes(tmp_path, run_cli):
    args = ("bench", *TINY, "--keep", "0.25", "--policy", "grid", "--frames", "3", "--repeats", "2", "--batch", "1",
            "--format", "json", "--out", str(tmp_path))
    code, first, err = run_cli(*args)
    assert code == 0, err
    log = tmp_path / "timings.jsonl"
    lines = log.read_text().splitlines()
    assert len(lines) == 4 * 2  # timm fused, timm explicit, dense, grid; two timed clips each
    assert {json.loads(line)["repeat"] for line in lines} == {0, 1}
    log.write_text("\n".join(lines[:5]) + "\n" + lines[5][:20])  # interrupted while writing line 6
    code, out, err = run_cli(*args)
    assert code == 0, err
    entries = [json.loads(line) for line in log.read_text().splitlines() if line.startswith("{") and
               line.endswith("}")]
    assert len(entries) == 8  # the 5 complete clips kept, only the 3 missing ones timed again
    assert sorted((e["repeat"], e["entry"]) for e in entries) == sorted(
        (json.loads(line)["repeat"], json.loads(line)["entry"]) for line in lines)
    timed = {row["name"]: row["steps_timed"] for row in json.loads(first)}
    assert {row["name"]: row["steps_timed"] for row in json.loads(out)} == timed
    assert timed["tokbench dense"] == 2 * 3 and timed["grid keep=0.25"] == 2 * 2  # frame 0 of a clip is full


def test_bench_times_the_users_data_and_a_refused_configuration_becomes_a_row(videos, run_cli):
    code, out, err = run_cli("bench", *TINY, "--keep", "0.25", "--policy", "rgtp", "--policy", "cls-attn",
                             "--set", "cut=input", "--data", str(videos), "--frames", "3", "--repeats", "1",
                             "--batch", "1", "--format", "json")
    assert code == 0, err
    rows = {r["name"]: r for r in json.loads(out)}
    assert rows["rgtp keep=0.25"]["error"] == "" and rows["rgtp keep=0.25"]["steps_timed"] == 2  # 3 steps, 1 full
    refused = rows["cls-attn keep=0.25"]
    assert "cls-attn" in refused["error"] and refused["cut"] == "input" and "step_ms_median" not in refused
    assert rows["rgtp keep=0.25"]["config_id"] != refused["config_id"]


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the error where torch sees no GPU")
def test_device_cuda_without_a_gpu_is_one_line(tmp_path, run_cli):
    code, _, err = run_cli("ablate", *TINY, "--policy", "rgtp", "--window", "1", "--sampling", "1", "--videos", "1",
                           "--frames", "2", "--device", "cuda", "--out", str(tmp_path / "out"))
    assert "torch sees no CUDA device" in _error(code, err)
