"""The command line (tokbench.cli) and the result-row helpers it relies on. Fast: nothing is trained or benchmarked.

Three ways in:
- ``subprocess`` on ``python -m tokbench``: the real entry point (``main()`` and its error handling), used where
  the command does not import torch (help, version, usage errors) plus one slow domain-error case;
- ``main()`` in-process with ``sys.argv`` patched and ``capsys``: the same error handling without paying a fresh
  torch import per case;
- ``typer.testing.CliRunner`` on ``tokbench.cli.app`` where the app's own exit code is enough.
"""

from __future__ import annotations

import csv
import json
import re
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

import tokbench
from tokbench import cli
from tokbench.errors import TokbenchError
from tokbench.results import append_row, config_id, finished_ids, prepare_out_dir

REPO = Path(__file__).resolve().parents[1]
runner = CliRunner()

def _tokbench(*args: str, timeout: float = 60) -> subprocess.CompletedProcess:
    """``python -m tokbench ARGS`` through the real ``main()``."""
    return subprocess.run([sys.executable, "-m", "tokbench", *args], cwd=REPO, capture_output=True, text=True,
                          timeout=timeout)



def _nonblank(text: str) -> list[str]:
    return [line for line in text.splitlines() if line.strip()]


# --------------------------------------------------------------------------------------------------- help / version


def test_import_cli_does_not_import_torch():
    code = "import sys, tokbench.cli; assert 'torch' not in sys.modules, 'tokbench.cli imported torch'"
    proc = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr


def test_help_via_entry_point():
    proc = _tokbench("--help")
    assert proc.returncode == 0, proc.stderr
    for command in ("models", "datasets", "train", "ablate", "run"):
        assert command in proc.stdout
    assert "Traceback" not in proc.stderr


def test_help_via_app():
    result = runner.invoke(cli.app, ["ablate", "--help"])
    assert result.exit_code == 0
    assert "--window" in result.output and "--out" in result.output


def test_version_via_entry_point():
    proc = _tokbench("--version")
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == f"tokbench {tokbench.__version__}"


def test_version_via_app():
    result = runner.invoke(cli.app, ["--version"])
    assert result.exit_code == 0
    assert result.output.strip() == f"tokbench {tokbench.__version__}"


# ------------------------------------------------------------------------------------------------------ bad input

# Every case also gets --videos 1 --frames 1, so that a validation that went missing cannot start a long run.
_BAD_INPUT = {
    "negative-window": (["--window", "-1"], "window"),
    "keep-zero": (["--keep", "0"], "keep"),
    "keep-fraction-above-one": (["--keep", "1.5"], "keep"),
    "stride-zero": (["--sampling", "0"], "stride"),
    "unknown-head-fusion": (["--head-fusion", "median"], "head_fusion"),
    "unknown-preset": (["--preset", "nope"], "preset"),
}


def _bad_input_cases(tmp_path: Path) -> dict[str, list[str]]:
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    cases = {name: [*args, "--out", str(tmp_path / "out")] for name, (args, _) in _BAD_INPUT.items()}
    cases["out-under-proc"] = ["--out", "/proc/tokbench-nope"]
    cases["out-under-a-file"] = ["--out", str(blocker / "sub")]
    return {name: ["ablate", *args, "--videos", "1", "--frames", "1"] for name, args in cases.items()}


_ALL_BAD = [*_BAD_INPUT, "out-under-proc", "out-under-a-file"]


@pytest.mark.parametrize("case", _ALL_BAD)
def test_bad_input_is_an_error_line_and_exit_1(case, tmp_path, run_cli):
    code, _, err = run_cli(*_bad_input_cases(tmp_path)[case])
    assert code == 1, err
    assert "Traceback" not in err
    errors = [line for line in _nonblank(err) if line.startswith("error:")]
    assert len(errors) == 1, err
    hint = _BAD_INPUT[case][1] if case in _BAD_INPUT else "output folder"
    assert hint in errors[0]


@pytest.mark.parametrize("case", _ALL_BAD)
def test_bad_input_stderr_is_one_line(case, tmp_path, run_cli):
    code, _, err = run_cli(*_bad_input_cases(tmp_path)[case])
    assert code == 1
    assert err.startswith("error:") and err.count("\n") == 1, repr(err)  # no bar, no blank line


def test_bad_input_leaves_no_output_folder(tmp_path, run_cli):
    out = tmp_path / "out"
    code, _, _ = run_cli("ablate", "--window", "-1", "--out", str(out))
    assert code == 1
    assert not out.exists()


@pytest.mark.slow
def test_bad_input_via_entry_point(tmp_path):
    """One case end to end in a fresh process: also catches warnings printed on import (torch, timm, fvcore)."""
    proc = _tokbench("ablate", "--keep", "0", "--out", str(tmp_path / "out"))
    assert proc.returncode == 1
    assert "Traceback" not in proc.stderr
    assert proc.stderr.startswith("error:") and proc.stderr.count("\n") == 1, proc.stderr


# ---------------------------------------------------------------------------------------------------- usage errors

_USAGE = {
    "unknown-option": ["ablate", "--bogus"],
    "window-not-an-int": ["ablate", "--window", "abc"],
    "unknown-command": ["nope"],
    "bad-task": ["ablate", "--task", "segment"],
    "no-arguments": [],  # no_args_is_help: help text, exit 2
}


@pytest.mark.parametrize("args", list(_USAGE.values()), ids=list(_USAGE))
def test_usage_error_exit_2_via_app(args):
    result = runner.invoke(cli.app, args)
    assert result.exit_code == 2, result.output


@pytest.mark.parametrize("args", list(_USAGE.values()), ids=list(_USAGE))
def test_usage_error_exit_2_via_entry_point(args):
    proc = _tokbench(*args)
    assert "Traceback" not in proc.stderr
    assert proc.returncode == 2, proc.stderr


# ------------------------------------------------------------------------------------------------ models, datasets


def test_models_lists_the_shipped_models():
    from tokbench.models import SHIPPED

    result = runner.invoke(cli.app, ["models"])
    assert result.exit_code == 0, result.output
    for name in SHIPPED:
        assert name in result.output
    # either a trained model card (dense metric) or the "missing; train it" note, never a crash
    assert "dense" in result.output or "missing" in result.output
    for name in ("vitdet_b", "vivit_b_k400", "vivit_b_epic", "any timm ViT name"):
        assert name in result.output


def test_datasets_lists_the_benchmarks():
    result = runner.invoke(cli.app, ["datasets"])
    assert result.exit_code == 0, result.output
    for name in ("synthvid ", "synthvid-fast", "synthaction"):
        assert name in result.output
    for name in ("sample:bikes", "sample:bigbuckbunny", "sample:carphone", "vid:ROOT", "csv:LABELS.csv"):
        assert name in result.output


# ---------------------------------------------------------------------------------------------- tokbench.results


def _read(rows_csv: Path) -> tuple[list[str], list[dict]]:
    with rows_csv.open(newline="") as f:
        reader = csv.DictReader(f)
        rows = list(reader)
        return list(reader.fieldnames or []), rows


def test_append_row_creates_then_appends(tmp_path):
    rows_csv = tmp_path / "rows.csv"
    append_row(rows_csv, {"config_id": "a", "window": 0, "error": ""})
    append_row(rows_csv, {"config_id": "b", "window": 1, "error": ""})
    header, rows = _read(rows_csv)
    assert header == ["config_id", "window", "error"]
    assert [(r["config_id"], r["window"]) for r in rows] == [("a", "0"), ("b", "1")]


def test_append_row_widens_the_header(tmp_path):
    rows_csv = tmp_path / "rows.csv"
    append_row(rows_csv, {"config_id": "a", "window": 0, "error": ""})
    append_row(rows_csv, {"config_id": "b", "window": 1, "error": "", "traceback": "boom"})
    append_row(rows_csv, {"config_id": "c", "window": 2, "error": ""})  # lacks the new column: left empty
    header, rows = _read(rows_csv)
    assert header == ["config_id", "window", "error", "traceback"]
    assert [r["config_id"] for r in rows] == ["a", "b", "c"]
    assert [r["traceback"] for r in rows] == ["", "boom", ""]
    assert not rows_csv.with_suffix(".tmp").exists()


def test_finished_ids_skips_failed_rows(tmp_path):
    rows_csv = tmp_path / "rows.csv"
    assert finished_ids(rows_csv) == set()  # no file yet
    append_row(rows_csv, {"config_id": "ok", "error": ""})
    append_row(rows_csv, {"config_id": "failed", "error": "RuntimeError: boom", "traceback": "..."})
    assert finished_ids(rows_csv) == {"ok"}
    append_row(rows_csv, {"config_id": "failed", "error": ""})  # the re-run succeeded
    assert finished_ids(rows_csv) == {"ok", "failed"}


def test_config_id_is_stable_and_distinguishes_configs():
    a = {"policy": "rgtp", "window": 1, "keep_ratio": 0.111, "sampling": 1}
    same_other_order = dict(reversed(list(a.items())))
    assert config_id(a) == config_id(dict(a)) == config_id(same_other_order)
    assert re.fullmatch(r"[0-9a-f]{12}", config_id(a))
    assert config_id(a) != config_id(a | {"window": 2})
    assert config_id(a) != config_id(a | {"sampling": 4})
    assert config_id(a) != config_id(a | {"extra": None})


def test_prepare_out_dir_creates_nested_folders(tmp_path):
    out = tmp_path / "a" / "b"
    assert prepare_out_dir(out) == out
    assert out.is_dir()
    assert list(out.iterdir()) == []  # the write probe is removed


@pytest.mark.parametrize("where", ["under-a-file", "proc"])
def test_prepare_out_dir_rejects_unwritable(tmp_path, where):
    if where == "proc":
        out = Path("/proc/tokbench-nope")
    else:
        blocker = tmp_path / "a-file"
        blocker.write_text("")
        out = blocker / "sub"
    with pytest.raises(TokbenchError, match="cannot write to output folder"):
        prepare_out_dir(out)


# ------------------------------------------------------------------------------------------------ tokbench.ablate


def test_expand_window_grid_with_every_baseline():
    from tokbench.ablate import AblationSpec, expand

    configs = expand(AblationSpec(knobs={"window": [0, 1, 2, 3]}))
    assert [c.policy for c in configs] == ["dense"] + ["rgtp"] * 4 + ["random"] * 3 + [
        "grid", "cls-attn", "eventful", "boxmask"]
    assert [c.window for c in configs[1:5]] == [0, 1, 2, 3]
    assert [c.seed for c in configs if c.policy == "random"] == [0, 1, 2]
    assert "boxmask" not in [c.policy for c in expand(AblationSpec(task="action", knobs={"window": [1]}))]


def test_expand_baselines_follow_budget_knobs_only():
    from tokbench.ablate import AblationSpec, expand

    configs = expand(AblationSpec(knobs={"window": [0, 1], "keep_ratio": [0.1, 0.2], "policy": ["rgtp", "grid"]}))
    assert [(c.policy, c.window, c.keep_ratio) for c in configs if c.policy != "rgtp"] == [
        ("dense", 1, 0.111), ("grid", 1, 0.1), ("grid", 1, 0.2)]


def test_expand_like_the_cli(tmp_path):
    """The CLI passes None for knobs left at their default; those do not multiply the grid."""
    from tokbench.ablate import AblationSpec, expand

    knobs = {"window": [0, 1], "keep_ratio": [0.111, 0.25], "reset_every": [8], "head_fusion": None,
             "similarity": None, "fg_ratio": None, "bg_ratio": None, "policy": ["rgtp"]}
    configs = expand(AblationSpec(knobs=knobs, preset="robust", seed=3))
    assert len(configs) == 1 + 4
    assert [(c.window, c.keep_ratio) for c in configs[1:]] == [(0, 0.111), (0, 0.25), (1, 0.111), (1, 0.25)]
    assert all(c.preset == "robust" and c.seed == 3 for c in configs)
    assert len({config_id(c.as_dict()) for c in configs}) == len(configs)


def test_expand_policies():
    from tokbench.ablate import AblationSpec, expand

    assert [c.policy for c in expand(AblationSpec(knobs={"window": [0, 1], "policy": ["dense"]}))] == ["dense"]
    both = expand(AblationSpec(knobs={"window": [0, 1], "policy": ["rgtp", "dense"]}))
    assert [c.policy for c in both] == ["dense", "rgtp", "rgtp"]


def test_list_options_take_space_separated_values():
    from tokbench.cli import expand_list_options

    assert expand_list_options(["ablate", "--window", "0", "1", "2", "3", "--videos", "3"]) == [
        "ablate", "--window", "0", "--window", "1", "--window", "2", "--window", "3", "--videos", "3"]
    assert expand_list_options(["ablate", "--window", "-1", "--keep", "0.1", "0.2"]) == [
        "ablate", "--window", "-1", "--keep", "0.1", "--keep", "0.2"]


def test_datasets_stats_compare_a_benchmark_with_imagenet_vid():
    from tokbench.data import detection_benchmark
    from tokbench.data.motion import VID_VAL_REFERENCE
    from tokbench.data.synthetic_detect import detection_stats

    result = runner.invoke(cli.app, ["datasets", "--stats", "synthvid-fast", "--videos", "2", "--format", "json"])
    assert result.exit_code == 0, result.output
    out = json.loads(result.output)
    expected = detection_stats(detection_benchmark("synthvid-fast", num_clips=2))
    assert out["benchmark"] == "synthvid-fast" and out["clips"] == 2 and out["imagenet_vid_val"] == VID_VAL_REFERENCE
    assert out["statistics"]["fast_pct"] == pytest.approx(expected["fast_pct"])
    slow = out["calibration"]["slow_pct"]
    assert slow["ok"] == (abs(slow["measured"] - 37.9) <= 3.0)
    bad = _tokbench("datasets", "--stats", "synthvidd")
    assert bad.returncode == 1 and "synthvid" in bad.stderr and "Traceback" not in bad.stderr
