"""The shipped benchmark weights load offline and reproduce the check metric on their card."""

import pytest

from tokbench.models import SHIPPED, WEIGHTS_DIR, load_shipped, model_card
from tokbench.train import evaluate_action, evaluate_detector

EVALUATE = {"detect": evaluate_detector, "action": evaluate_action}
AVAILABLE = [name for name in SHIPPED if (WEIGHTS_DIR / f"{name}.json").exists()]


def test_the_detector_is_shipped():
    assert "synthvid-det" in AVAILABLE
    assert (WEIGHTS_DIR / "synthvid-det.safetensors").stat().st_size < 10 * 2**20


@pytest.mark.slow
@pytest.mark.parametrize("name", AVAILABLE)
def test_shipped_weights_reproduce_their_card(name):
    card = model_card(name)
    check = card["check_metric"]
    model = load_shipped(name)
    value = EVALUATE[SHIPPED[name]](model, check["clips"])
    assert value == pytest.approx(check["value"], abs=1.0)  # fp16 weights on disk, float32 when trained
