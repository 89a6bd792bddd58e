"""``StreamingEngine.compile``: the method's own functions through ``torch.compile`` give the records eager gives,
to float tolerance, on both engine paths (K/V reuse with buffered rollout rows; the shrinking sequence), and FLOP
counting still traces the eager functions."""

from __future__ import annotations

import pytest
import torch

from tokbench.config import MethodConfig
from tokbench.frame_flops import frame_costs
from tokbench.models.zoo import load_model


@pytest.fixture(scope="module")
def tiny():
    return load_model("vit_tiny_patch16_224", img_size=64, seed=0)


@pytest.mark.parametrize("kv_reuse", ["on", "off"])
def test_compiled_method_gives_the_eager_records(tiny, kv_reuse):
    config = MethodConfig(policy="rgtp", keep_ratio=0.5, window=1, reset_every=4, kv_reuse=kv_reuse)
    frames = torch.rand(7, 2, 3, 64, 64, generator=torch.Generator().manual_seed(0))
    eager, compiled = tiny.engine(config), tiny.engine(config)
    compiled.compile()
    assert compiled.ops.track_scores is not eager.ops.track_scores
    for a, b in zip(eager.run_clip(frames, [0, 1]), compiled.run_clip(frames, [0, 1]), strict=True):
        assert a.kind == b.kind
        assert (a.kept is None and b.kept is None) or torch.equal(a.kept, b.kept)
        torch.testing.assert_close(b.heatmap, a.heatmap, rtol=1e-5, atol=1e-7)
        torch.testing.assert_close(b.predictions, a.predictions, rtol=1e-5, atol=1e-5)
    assert frame_costs(compiled, frames[0, :1]) == frame_costs(eager, frames[0, :1])
