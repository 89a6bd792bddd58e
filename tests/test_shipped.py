"""The shipped benchmark weights load offline and reproduce the check metric on their card."""

import pytest

from tokbench.models import SHIPPED, WEIGHTS_DIR, load_shipped, model_card
from tokbench.train import evaluate_action, evaluate_detector

EVALUATE = {"detect": evaluate_detector, "action": evaluate_action}
AVAILABLE = [name for name in SHIPPED if (WEIGHTS_DIR / f"{name}.json").exists()]


@pytest.mark.parametrize("name", ["synthvid-det", "synthvid-fast-det", "synthaction-vivit"])
def test_the_benchmark_models_are_shipped_small_and_trained_on_full_frames(name):
    assert name in AVAILABLE
    assert (WEIGHTS_DIR / f"{name}.safetensors").stat().st_size < 10 * 2**20
    card = model_card(name)
    assert card["trained_on"] == "full frames (no token dropping)" and card["train_minutes"] > 0
    assert card["val_metric"]["clips"] >= 50
    assert card["val_metric"]["value"] >= (80 if SHIPPED[name] == "detect" else 85)


@pytest.mark.slow
@pytest.mark.parametrize("name", AVAILABLE)
def test_shipped_weights_reproduce_their_card(name):
    card = model_card(name)
    check = card["check_metric"]
    model = load_shipped(name)
    version = {"version": card["val_data"]["spec_version"]} if SHIPPED[name] == "detect" else {}
    value = EVALUATE[SHIPPED[name]](model, check["clips"], **version)
    assert value == pytest.approx(check["value"], abs=1.0)  # fp16 weights on disk, float32 when trained
