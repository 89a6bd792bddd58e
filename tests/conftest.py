import sys

import pytest
import torch

import tokbench  # noqa: F401  (installs the torchvision shim before anything imports timm)
from tokbench import compat

compat.ensure_torchvision()


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


@pytest.fixture
def run_cli(monkeypatch, capsys):
    """``run_cli(*args)`` runs ``tokbench.cli.main()`` in-process; returns (exit code, stdout, stderr)."""
    from tokbench import cli

    def run(*args: str) -> tuple[int | str | None, str, str]:
        monkeypatch.setattr(sys, "argv", ["tokbench", *args])
        code: int | str | None = 0
        try:
            cli.main()
        except SystemExit as exit_:
            code = exit_.code
        out, err = capsys.readouterr()
        return code, out, err

    return run
