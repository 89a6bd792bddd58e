"""tokbench: benchmark token pruning (RGTP and baselines) on timm video ViTs.

Importing the package is cheap (no torch); the torchvision shim is installed as a lazy import hook so that
``import timm`` works afterwards on CPU-only torch builds (see ``tokbench.compat``).
"""

from tokbench import compat as _compat

__version__ = "0.1.0"

_compat.install()
