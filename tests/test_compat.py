"""The torchvision shim: fixes the CPU-torch + CUDA-torchvision import, and is a no-op elsewhere."""

import subprocess
import sys
import textwrap


def _run(code: str, extra_path: str | None = None) -> subprocess.CompletedProcess:
    env_path = f"sys.path.insert(0, {extra_path!r})\n" if extra_path else ""
    return subprocess.run(
        [sys.executable, "-c", "import sys\n" + env_path + textwrap.dedent(code)],
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_timm_imports_after_tokbench_without_torch_at_import():
    proc = _run(
        """
        import tokbench
        assert "torch" not in sys.modules, "importing tokbench must not import torch"
        import timm, torchvision
        from tokbench import compat
        timm.create_model("vit_tiny_patch16_224", pretrained=False, img_size=32)
        print("applied" if compat.shim_applied() else "native")
        """
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() in {"applied", "native"}


def test_shim_is_a_noop_when_torchvision_imports_natively(tmp_path):
    fake = tmp_path / "torchvision"
    fake.mkdir()
    (fake / "__init__.py").write_text("NATIVE = True\n")
    proc = _run(
        """
        import tokbench
        import torchvision
        from tokbench import compat
        assert torchvision.NATIVE
        print(compat.shim_applied())
        """,
        extra_path=str(tmp_path),
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "False"


def test_shim_applies_only_to_the_missing_operator_error(tmp_path):
    fake = tmp_path / "torchvision"
    fake.mkdir()
    (fake / "__init__.py").write_text("raise RuntimeError('something else entirely')\n")
    proc = _run("import tokbench\nimport torchvision\n", extra_path=str(tmp_path))
    assert proc.returncode != 0
    assert "something else entirely" in proc.stderr


def test_shim_retries_after_defining_the_schemas(tmp_path):
    fake = tmp_path / "torchvision"
    fake.mkdir()
    (fake / "__init__.py").write_text(
        "import torch\n"
        "try:\n"
        "    torch.ops.torchvision.nms.default\n"
        "except (AttributeError, RuntimeError):\n"
        "    raise RuntimeError('operator torchvision::nms does not exist') from None\n"
        "RETRIED = True\n"
    )
    proc = _run(
        """
        import tokbench
        import torchvision
        from tokbench import compat
        print(torchvision.RETRIED, compat.shim_applied())
        """,
        extra_path=str(tmp_path),
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "True True"
