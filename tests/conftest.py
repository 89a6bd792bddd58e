import pytest
import torch

import tokbench  # noqa: F401  (installs the torchvision shim before anything imports timm)
from tokbench import compat

compat.ensure_torchvision()


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)
