"""Reproducible runs and results that cannot be misread: seeded weights, weight identity, one experiment per
output folder, row columns with one meaning each, table precision (issue: every number right)."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import av
import numpy as np
import pytest
import torch

from tokbench.errors import TokbenchError
from tokbench.models.zoo import file_sha256, load_model
from tokbench.report import format_metric, gmacs_decimals, markdown
from tokbench.results import ExperimentMismatch, check_experiment

TINY = ["--model", "vit_tiny_patch16_224", "--img-size", "32"]


def _state(loaded) -> dict[str, torch.Tensor]:
    return loaded.model.state_dict()


def test_random_init_weights_follow_the_seed():
    a = load_model("vit_tiny_patch16_224", img_size=32, seed=3)
    b = load_model("vit_tiny_patch16_224", img_size=32, seed=3)
    c = load_model("vit_tiny_patch16_224", img_size=32, seed=4)
    assert all(torch.equal(v, _state(b)[k]) for k, v in _state(a).items())
    assert not torch.equal(_state(a)["blocks.0.attn.qkv.weight"], _state(c)["blocks.0.attn.qkv.weight"])
    assert a.weights == "random-init:seed=3" and c.weights == "random-init:seed=4"


def test_building_a_model_leaves_the_global_generator_alone():
    torch.manual_seed(11)
    expected = torch.rand(3)
    torch.manual_seed(11)
    load_model("vit_tiny_patch16_224", img_size=32, seed=5)
    assert torch.equal(torch.rand(3), expected)


def test_weights_identity_of_checkpoints_and_shipped_models(tmp_path):
    path = tmp_path / "w.pth"
    torch.save(load_model("vit_tiny_patch16_224", img_size=32).model.state_dict(), path)
    loaded = load_model("vit_tiny_patch16_224", path, 32, seed=9)
    assert loaded.weights == f"checkpoint:{file_sha256(path)}" and len(file_sha256(path)) == 64
    shipped = load_model("synthvid-det")
    assert shipped.weights.startswith("synthvid-det@") is False and shipped.weights.startswith("shipped:synthvid-det@")
    assert shipped.describe()["weights"] == shipped.weights


def test_check_experiment_refuses_rows_of_another_experiment(tmp_path):
    experiment = {"model": "a", "weights": "random-init:seed=0", "img_size": [32, 32]}
    check_experiment(tmp_path, experiment)  # an empty folder takes anything
    (tmp_path / "rows.csv").write_text("config_id\nx\n")
    (tmp_path / "meta.json").write_text(json.dumps({"experiment": experiment}))
    check_experiment(tmp_path, dict(experiment))
    with pytest.raises(ExperimentMismatch, match="weights: 'random-init:seed=0' there, 'random-init:seed=1' now"):
        check_experiment(tmp_path, experiment | {"weights": "random-init:seed=1"})
    (tmp_path / "meta.json").write_text("{}")
    with pytest.raises(TokbenchError, match="unknown experiment"):
        check_experiment(tmp_path, experiment)


def test_gmacs_decimals_show_the_rows_apart():
    assert gmacs_decimals([1.6, 1.7]) == 3
    assert gmacs_decimals([0.62, 0.621]) == 5
    assert gmacs_decimals([0.61955, 0.62016, 1.64227]) == 5  # 3 decimals would print 0.620 twice
    assert gmacs_decimals([2.0, 2.0, float("nan")]) == 3


def test_metric_cells_keep_their_digits_and_say_missing():
    assert format_metric("map50", 73.84) == "73.8"
    assert format_metric("map50", 57.53, 1.13) == "57.5 ± 1.1"
    assert format_metric("cosine_pooled", 0.99123) == "8.77"  # 1 - cos in per mille
    assert format_metric("cosine_pooled", 0.99123, 0.0004) == "8.77 ± 0.4"
    assert format_metric("top1_agreement", 81.25) == "81.25"
    assert format_metric("map50", float("nan")) == "—"


def _write_video(path: Path, frames: int = 5, size: int = 48) -> Path:
    with av.open(str(path), "w") as container:
        stream = container.add_stream("libx264", rate=10)
        stream.width = stream.height = size
        stream.pix_fmt = "yuv420p"
        rng = np.random.default_rng(0)
        texture = rng.integers(0, 255, (size, size + 4 * frames, 3), dtype=np.uint8)
        for t in range(frames):
            frame = np.ascontiguousarray(texture[:, 4 * t : 4 * t + size])
            for packet in stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return path


@pytest.fixture
def video(tmp_path) -> Path:
    return _write_video(tmp_path / "clip.mp4")


def _rows(folder: Path) -> list[dict]:
    with open(folder / "rows.csv", newline="") as f:
        return list(csv.DictReader(f))


ABLATE = ["ablate", *TINY, "--window", "1", "--keep", "0.25", "--policy", "rgtp", "random", "--sampling", "1",
          "--frames", "4", "--videos", "1"]
METRICS = ("top1_agreement", "kl_to_dense", "keep_tokens", "gmacs_per_clip", "unit", "frames_run", "config_id")


def test_two_runs_into_fresh_folders_give_identical_metrics(video, tmp_path, run_cli):
    tables = []
    for name in ("a", "b"):
        code, _, err = run_cli(*ABLATE, "--data", str(video), "--out", str(tmp_path / name))
        assert code == 0, err
        tables.append([{k: r[k] for k in METRICS} for r in _rows(tmp_path / name)])
    assert tables[0] == tables[1]


def test_rows_name_each_column_once_with_resolved_options(video, tmp_path, run_cli):
    out = tmp_path / "out"
    code, _, err = run_cli(*ABLATE, "--data", str(video), "--out", str(out), "--set", "tie_break=unstable")
    assert code == 0, err
    header = (out / "rows.csv").read_text().splitlines()[0].split(",")
    assert len(header) == len(set(header))
    for row in _rows(out):
        assert row["frames_per_clip_limit"] == "4" and row["frames_run"] == "4"
        assert row["weights"] == "random-init:seed=0" and row["tie_break"] == "unstable"
        assert {"convention", "sdpa_flops", "config_id", "error", "wall_s"} <= set(row)
        assert "auto" not in row.values(), row
    rgtp = next(r for r in _rows(out) if r["policy"] == "rgtp")
    assert rgtp["kv_reuse"] == "off" and rgtp["reset_mode"] == "pattern" and rgtp["pruned_score_fill"] == "nearest_kept"


def test_an_out_folder_holds_one_experiment(video, tmp_path, run_cli):
    out = tmp_path / "out"
    code, _, err = run_cli(*ABLATE, "--data", str(video), "--out", str(out))
    assert code == 0, err
    before = (out / "rows.csv").read_text()
    code, _, err = run_cli(*ABLATE, "--data", str(video), "--out", str(out), "--seed", "1")
    lines = [line for line in err.splitlines() if line.strip()]
    assert code == 1 and len(lines) == 1 and "another experiment" in lines[0] and "--out" in lines[0], err
    assert "data_seed: 0 there, 1 now" in lines[0]
    assert (out / "rows.csv").read_text() == before


def test_markdown_says_whether_classification_is_training_free(video, tmp_path, run_cli):
    out = tmp_path / "out"
    code, _, err = run_cli(*ABLATE, "--data", str(video), "--out", str(out))
    assert code == 0, err
    text = markdown(out)
    assert "training-free" in text and "random-init:seed=0" in text
    assert "nan" not in text


def test_set_options_reach_every_row_of_an_ablation(video, tmp_path, run_cli):
    out = tmp_path / "out"
    code, _, err = run_cli("ablate", *TINY, "--data", str(video), "--policy", "rgtp", "grid", "--sampling", "1",
                           "--frames", "3", "--videos", "1", "--out", str(out), "--set", "track_radius=2",
                           "keep_ratio=0.5", "--set", "reset_every=2")
    assert code == 0, err
    rows = _rows(out)
    assert [r["policy"] for r in rows] == ["dense", "rgtp", "grid"]
    assert all(r["keep_ratio"] == "0.5" and r["reset_every"] == "2" for r in rows)
    assert rows[1]["window"] == "2" and rows[2]["keep_tokens"] == "2"


@pytest.mark.parametrize("item", ["seed=3", "policy=grid", "preset=reference"])
def test_set_refuses_options_that_have_their_own_flag(item, tmp_path, run_cli):
    code, _, err = run_cli("ablate", *TINY, "--set", item, "--out", str(tmp_path / "o"))
    assert code == 1 and f"with --{item.split('=')[0]}, not --set" in err


@pytest.mark.parametrize(
    "args", [["run", "--keep", "0.2", "0.3"], ["bench", "--window", "0", "1"], ["run", "--sampling", "1", "4"]]
)
def test_a_second_value_for_a_single_value_option_is_a_usage_error(args, run_cli):
    code, _, err = run_cli(*args)
    assert code == 2, err


def test_pretrained_weights_load_through_timm_and_are_identified(tmp_path):
    import timm

    reference = timm.create_model("vit_tiny_patch16_224", img_size=32)
    path = tmp_path / "hub.pth"
    torch.save(reference.state_dict(), path)  # timm's file override of the pretrained config stands in for the hub
    loaded = load_model("vit_tiny_patch16_224", img_size=32, pretrained=True, pretrained_overlay={"file": str(path)})
    assert all(torch.equal(v, reference.state_dict()[k]) for k, v in loaded.model.state_dict().items())
    assert loaded.weights.startswith("pretrained:timm/vit_tiny_patch16_224") and len(loaded.weights.split("@")[1]) == 64


def test_pretrained_offline_is_one_line_that_points_to_checkpoint(monkeypatch, tmp_path, run_cli):
    import timm

    def offline(name, pretrained=False, **kwargs):
        if pretrained:
            raise OSError("We couldn't connect to 'https://huggingface.co' to load this file.\nCheck your connection.")
        return create(name, **kwargs)

    create = timm.create_model
    monkeypatch.setattr(timm, "create_model", offline)
    code, _, err = run_cli("flops", *TINY, "--pretrained")
    lines = [line for line in err.splitlines() if line.strip()]
    assert code == 1 and len(lines) == 1 and "--checkpoint" in lines[0] and "OSError" in lines[0], err
    code, _, err = run_cli("flops", *TINY, "--pretrained", "--checkpoint", str(tmp_path / "w.pth"))
    assert code == 1 and "give one" in err
    code, _, err = run_cli("flops", "--model", "synthvid-det", "--pretrained")
    assert code == 1 and "takes --checkpoint" in err
