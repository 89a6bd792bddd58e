"""Benchmark models, detection anchors, metrics, and a seconds-long training smoke test."""

import json
import math

import numpy as np
import pytest
import torch

from tokbench.config import MethodConfig
from tokbench.engine import StreamingEngine
from tokbench.metrics import kl_to_dense, map50, top1, top1_agreement
from tokbench.models.action import ActionSpec, SpatialStepTask, ViViTFactorised, normalize
from tokbench.models.centre_loss import centre_targets, detection_loss
from tokbench.models.detector import DetectionTask, DetectorSpec, ViTDetector, decode
from tokbench.rollout import anchor_mask
from tokbench.vit import ViTAdapter

SMALL_DET = DetectorSpec(img_size=64, depth=2, embed_dim=64, num_heads=2, head_dim=32)


def test_detector_shapes_and_decoding():
    model = ViTDetector(SMALL_DET).eval()
    out = model(torch.randn(2, 3, 64, 64))
    assert out["heat"].shape == (2, 6, 4, 4) and out["size"].shape == (2, 2, 4, 4)
    dets = decode(out, 16, 5)
    assert len(dets) == 2 and dets[0]["boxes"].shape == (5, 4) and dets[0]["labels"].max() < 6


def test_decoding_recovers_a_planted_box():
    heat = torch.full((1, 6, 4, 4), -10.0)
    heat[0, 3, 1, 2] = 5.0
    size = torch.zeros(1, 2, 4, 4)
    size[0, :, 1, 2] = torch.tensor([2.0, 1.0]).log()  # 32 x 16 px
    offset = torch.full((1, 2, 4, 4), 0.5)
    det = decode({"heat": heat, "size": size, "offset": offset}, 16, 1)[0]
    assert det["labels"].tolist() == [3]
    assert torch.allclose(det["boxes"][0], torch.tensor([24.0, 16.0, 56.0, 32.0]))


def test_anchor_mask_scaling_clipping_and_threshold():
    boxes = torch.tensor([[16.0, 0.0, 40.0, 20.0], [0.0, 0.0, 64.0, 64.0]])
    mask = anchor_mask(boxes, torch.tensor([0.9, 0.1]), (4, 4), (64, 64), score_thr=0.1).reshape(4, 4)
    expected = torch.zeros(4, 4, dtype=torch.bool)
    expected[0:2, 1:3] = True  # x 1..2.5 -> [1, 3), y 0..1.25 -> [0, 2); the 0.1 box is not strictly above
    assert torch.equal(mask, expected)
    edge = torch.tensor([[48.0, 48.0, 64.0, 64.0]])
    assert not anchor_mask(edge, torch.tensor([1.0]), (4, 4), (64, 64)).any()  # reference clip to g-1 empties it
    assert anchor_mask(edge, torch.tensor([1.0]), (4, 4), (64, 64), clip_end="g").reshape(4, 4)[3, 3]
    wide = anchor_mask(torch.tensor([[0.0, 0.0, 32.0, 16.0]]), torch.tensor([1.0]), (2, 4), (32, 64))
    assert wide.reshape(2, 4)[0].tolist() == [True, True, False, False]  # x scaled by w / W_in, y by h / H_in


def test_detection_task_start_vectors_never_nan():
    model = ViTDetector(SMALL_DET).eval()
    task = DetectionTask(model, score_thr=2.0)  # no box passes: uniform over patches
    dets = [{"boxes": torch.zeros(1, 4), "scores": torch.ones(1), "labels": torch.zeros(1, dtype=torch.long)}]
    start = task.rollout_start(ViTAdapter(model.backbone), dets, torch.zeros(1, 16, 8), (4, 4))
    assert torch.allclose(start, torch.full((1, 16), 1 / 16))
    config = MethodConfig(keep_ratio=0.25, reset_every=0)
    records = StreamingEngine(model.backbone, config, DetectionTask(model)).run_clip([torch.randn(1, 3, 64, 64)] * 3)
    assert [r.num_kept for r in records] == [16, 4, 4]
    assert all(torch.isfinite(r.heatmap).all() for r in records)


def test_action_model_shapes_and_engine_steps():
    spec = ActionSpec(num_frames=4, img_size=32, depth=2, embed_dim=64, num_heads=2, temporal_depth=1)
    model = ViViTFactorised(spec).eval()
    clips = torch.randn(2, 4, 3, 32, 32)
    assert model(clips).shape == (2, 8)
    config = MethodConfig(keep_ratio=1.0)
    engine = StreamingEngine(model.spatial, config, SpatialStepTask())
    steps = torch.stack([r.predictions for r in engine.run_clip(clips.transpose(0, 1))], dim=1)
    assert torch.allclose(model.temporal(steps), model(clips), atol=1e-5)


def test_map50_known_answers():
    target = [{"boxes": torch.tensor([[0.0, 0.0, 10.0, 10.0]]), "labels": torch.tensor([1])}]
    hit = [{"boxes": torch.tensor([[1.0, 0.0, 10.0, 10.0]]), "scores": torch.tensor([0.9]),
            "labels": torch.tensor([1])}]
    miss = [{"boxes": torch.tensor([[20.0, 20.0, 30.0, 30.0]]), "scores": torch.tensor([0.9]),
             "labels": torch.tensor([1])}]
    assert map50(hit, target) == pytest.approx(100.0)
    assert map50(miss, target) == pytest.approx(0.0)


def test_classification_metrics():
    logits = torch.tensor([[2.0, 0.0], [0.0, 1.0], [3.0, 0.0]])
    assert top1(logits, torch.tensor([0, 1, 1])) == pytest.approx(200 / 3)
    assert top1_agreement(logits, logits) == 100.0
    assert kl_to_dense(logits, logits) == pytest.approx(0.0, abs=1e-7)
    assert kl_to_dense(logits, logits.flip(1)) > 0


def test_detector_training_loss_falls():
    torch.manual_seed(0)
    from tokbench.data import detection_frames

    model = ViTDetector(SMALL_DET).train()
    batch = list(detection_frames("train", n=8, seed=0, size=64))
    images = torch.stack([f for f, _ in batch])
    target = centre_targets([t for _, t in batch], (4, 4), 16, 6)
    opt = torch.optim.AdamW(model.parameters(), lr=2e-3)
    losses = []
    for _ in range(25):
        loss = detection_loss(model(images), target)["loss"]
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(float(loss.detach()))
    assert losses[-1] < 0.5 * losses[0]


def test_end_to_end_runs_give_records_and_summaries():
    from tokbench.data import SyntheticAction, SyntheticDetection
    from tokbench.models.zoo import load_model, wrap_model
    from tokbench.pipeline import evaluate

    [det] = evaluate(load_model("synthvid-det"), SyntheticDetection("val", num_clips=1, num_frames=9),
                     [MethodConfig(reset_every=4)], videos=1)
    assert [f["kind"] for f in det.frames] == ["full"] + ["pruned"] * 3 + ["reset"] + ["pruned"] * 3 + ["reset"]
    assert det.frames[1]["kept_tokens"] == 44 and len(det.frames[1]["kept"]) == 44
    assert 0 <= det.row["map50"] <= 100 and det.row["frames_run"] == 9
    [act] = evaluate(wrap_model("action", ViViTFactorised().eval()), SyntheticAction("val", num_clips=2),
                     [MethodConfig(keep_ratio=0.3)], sampling=2, videos=2)
    assert act.row["frames_run"] == 16 and {f["frame"] for f in act.frames} == set(range(0, 16, 2))
    assert act.row["top1"] in (0.0, 50.0, 100.0)


def test_sincos_position_embedding_known_values_and_frozen_in_the_action_model():
    from tokbench.models.action import sincos_2d

    pe = sincos_2d((2, 3), 8)  # 2 frequencies: 1 and 1 / 10
    assert pe.shape == (6, 8)
    assert torch.allclose(pe[0], torch.tensor([0.0, 0.0, 1.0, 1.0, 0.0, 0.0, 1.0, 1.0]))
    x2_y1 = 1 * 3 + 2  # row-major: patch (y=1, x=2)
    expected = [math.sin(2), math.sin(0.2), math.cos(2), math.cos(0.2), math.sin(1), math.sin(0.1), math.cos(1),
                math.cos(0.1)]
    assert torch.allclose(pe[x2_y1], torch.tensor(expected), atol=1e-6)
    model = ViViTFactorised(ActionSpec(num_frames=2, img_size=32, depth=1, embed_dim=16, num_heads=2))
    assert not model.spatial.pos_embed.requires_grad
    assert torch.equal(model.spatial.pos_embed[0, 1:], sincos_2d((2, 2), 16))
    assert torch.equal(model.spatial.pos_embed[0, 0], torch.zeros(16))  # the class token gets none
    learned = ViViTFactorised(ActionSpec(num_frames=2, img_size=32, depth=1, embed_dim=16, num_heads=2,
                                         pos_embed="learn"))
    assert learned.spatial.pos_embed.requires_grad


def test_action_training_loss_falls_with_its_auxiliary_targets():
    from tokbench.data import SyntheticAction
    from tokbench.models.action_loss import AuxHeads, action_loss, frame_targets

    torch.manual_seed(0)
    spec = ActionSpec(num_frames=4, img_size=64, depth=2, embed_dim=32, num_heads=2, temporal_depth=1)
    data = SyntheticAction("train", num_clips=4, num_frames=4, size=64)
    model, aux = ViViTFactorised(spec).train(), AuxHeads(32)
    clips = normalize(torch.stack([c.frames for c in data]))
    labels = torch.tensor([c.label for c in data])
    state, coverage = (torch.stack(p) for p in zip(*(frame_targets(data, i, 16) for i in range(4)), strict=True))
    assert state.shape == (4, 4, 5) and coverage.shape == (4, 4, 16)
    motion = data.motion(1)
    assert torch.allclose((state[1, :, :2] / 4 + 0.5) * 64, torch.tensor(motion["centre"], dtype=torch.float32))
    assert torch.allclose(state[1, :, 3], torch.tensor(np.cos(motion["angle"]), dtype=torch.float32))
    pixels = torch.tensor(data.object_masks(1).sum(axis=(1, 2)), dtype=torch.float32)  # [T]
    assert torch.allclose(coverage[1].sum(-1) * 16 * 16, pixels)
    params = list(model.parameters()) + list(aux.parameters())
    opt = torch.optim.AdamW([p for p in params if p.requires_grad], lr=2e-3)
    losses = []
    for _ in range(20):
        parts = action_loss(model, aux, clips, labels, state, coverage)
        opt.zero_grad()
        parts["loss"].backward()
        opt.step()
        losses.append({k: float(v.detach()) for k, v in parts.items()})
    assert losses[-1]["loss"] < 0.6 * losses[0]["loss"]
    assert losses[-1]["attn"] < losses[0]["attn"] and losses[-1]["state"] < losses[0]["state"]


def test_train_action_writes_fp16_weights_and_a_card_whose_check_metric_reloads(tmp_path):
    from tokbench.models import load_trained
    from tokbench.train import evaluate_action, train_action

    seen = []
    card = train_action(steps=2, batch=2, val_clips=2, check_clips=2, out=tmp_path, command="test",
                        progress=lambda step, total, losses: seen.append((step, sorted(losses))))
    assert seen[-1] == (2, ["attn", "ce", "loss", "object", "state"])
    assert card["trained_on"] == "full frames (no token dropping)" and card["val_data"]["spec_version"] == 2
    assert json.loads((tmp_path / "synthaction-vivit.json").read_text()) == json.loads(json.dumps(card))
    model = load_trained(tmp_path / "synthaction-vivit.safetensors")
    assert evaluate_action(model, 2) == card["check_metric"]["value"]
