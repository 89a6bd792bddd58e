"""Make ``import torchvision`` (and so ``import timm``) work on a CPU-only torch.

The only torchvision 0.28 wheel is a CUDA build. Next to a CPU-only torch its import fails with
``RuntimeError: operator torchvision::nms does not exist``: its Python side registers fake kernels for C++
operators whose schemas were never loaded. timm imports torchvision, so timm fails too.

The fix, applied only when the native import fails with exactly that error: define the missing schemas
(``torchvision::nms`` and ``torchvision::qnms``) and import again. torchvision's C++ kernels stay unusable,
which is why tokbench never calls ``torchvision.ops`` or ``torchvision.io``. Where torchvision imports natively
(a matching CUDA or CPU build) nothing is changed.

``install()`` (called by ``tokbench/__init__``) adds a tiny import hook, so the fix runs lazily at the first
``import torchvision`` and importing tokbench stays free of torch. ``ensure_torchvision()`` applies it now.
"""

from __future__ import annotations

import importlib.abc
import importlib.machinery
import sys

_MISSING_OP = "torchvision::nms does not exist"
_SCHEMAS = (
    "nms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor",
    "qnms(Tensor qdets, Tensor scores, float iou_threshold) -> Tensor",
)
_library = None  # the torch.library.Library must stay alive for its definitions to stay registered


def shim_applied() -> bool:
    """True if tokbench had to define torchvision's operator schemas in this process."""
    return _library is not None


def _define_schemas() -> None:
    global _library
    if _library is not None:
        return
    import torch

    _library = torch.library.Library("torchvision", "DEF")
    for schema in _SCHEMAS:
        _library.define(schema)


def _drop_partial_imports() -> None:
    for name in [m for m in sys.modules if m == "torchvision" or m.startswith("torchvision.")]:
        del sys.modules[name]


def _is_missing_op(err: BaseException) -> bool:
    return isinstance(err, RuntimeError) and _MISSING_OP in str(err)


def ensure_torchvision() -> None:
    """Import torchvision, defining its missing operator schemas first if (and only if) that is needed."""
    if "torchvision" in sys.modules and not _is_initializing("torchvision"):
        return
    try:
        import torchvision  # noqa: F401
    except RuntimeError as err:
        if not _is_missing_op(err):
            raise
        _drop_partial_imports()
        _define_schemas()
        import torchvision  # noqa: F401


def _is_initializing(name: str) -> bool:
    spec = getattr(sys.modules.get(name), "__spec__", None)
    return bool(getattr(spec, "_initializing", False))


class _RetryingLoader(importlib.abc.Loader):
    """Wraps torchvision's own loader: on the missing-operator error, define the schemas and run it again."""

    def __init__(self, inner: importlib.abc.Loader) -> None:
        self._inner = inner

    def create_module(self, spec):
        return self._inner.create_module(spec)

    def exec_module(self, module) -> None:
        try:
            self._inner.exec_module(module)
        except RuntimeError as err:
            if not _is_missing_op(err):
                raise
            for name in [m for m in sys.modules if m.startswith("torchvision.")]:
                del sys.modules[name]
            _define_schemas()
            self._inner.exec_module(module)

    def __getattr__(self, name):  # resource readers, get_filename, ...
        return getattr(self._inner, name)


class _TorchvisionFinder(importlib.abc.MetaPathFinder):
    def find_spec(self, fullname, path, target=None):
        if fullname != "torchvision":
            return None
        spec = importlib.machinery.PathFinder.find_spec(fullname, path)
        if spec is not None and spec.loader is not None:
            spec.loader = _RetryingLoader(spec.loader)
        return spec


_FINDER = _TorchvisionFinder()


def install() -> None:
    """Register the lazy import hook (idempotent; a no-op once torchvision is imported)."""
    if "torchvision" in sys.modules or _FINDER in sys.meta_path:
        return
    sys.meta_path.insert(0, _FINDER)
