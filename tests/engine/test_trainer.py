"""The training loop on tiny CPU data: distributed and resume equivalence, non-finite losses, learning."""

from __future__ import annotations

import math
import os
import signal

import pytest
import torch
from detection_ops_probe import probe_detection_ops
from model_configs import model_params
from tiny_training import (
    ALL_SAMPLES_MODEL,
    TINY_MODEL,
    merged,
    runtime_config,
    train_config,
    train_from_parameters,
    write_tiny_dataset,
)
from torch import nn

from frcnn_pipeline.data import demo
from frcnn_pipeline.data.coco import SplitSource, read_coco_split
from frcnn_pipeline.engine.build import load_initial_weights
from frcnn_pipeline.engine.checkpoint import CheckpointManager, load_checkpoint
from frcnn_pipeline.engine.loop import NonFiniteLossError
from frcnn_pipeline.modeling import StaticFasterRCNN, build_model
from frcnn_pipeline.modeling.backbone import SyncBatchNormError
from frcnn_pipeline.modeling.static import StaticBatch
from frcnn_pipeline.runtime.signals import TrainingStopped


def _one_sgd_step(tmp_path, tables, name: str, *, world_size: int, per_device: int):
    images, annotations = tables
    train = train_config(tmp_path, optimizer="sgd", base_lr=0.05, max_iter=1, warmup_iters=0, steps=[])
    train.update(run_name=name, images_per_device=per_device, flip_prob=0.0)
    runtime = runtime_config(nproc_per_node=world_size, num_threads=1)
    return train_from_parameters(images, annotations, 2, ALL_SAMPLES_MODEL, train, runtime)


def test_two_workers_one_image_each_equal_one_worker_two_images(tmp_path):
    images, annotations = write_tiny_dataset(tmp_path / "images", count=2, boxes_per_image=2, seed=3)
    torch.manual_seed(7)
    initial = build_model(model_params(ALL_SAMPLES_MODEL), 2).state_dict()
    distributed = _one_sgd_step(tmp_path, (images, annotations), "ddp", world_size=2, per_device=1)
    single = _one_sgd_step(tmp_path, (images, annotations), "single", world_size=1, per_device=2)
    first_image_only = _one_sgd_step(tmp_path, (images, annotations), "first", world_size=1, per_device=1)

    assert distributed["record"]["world_size"] == 2 and distributed["record"]["total_batch"] == 2
    moved = max((single["state_dict"][k] - initial[k]).abs().max().item() for k in initial)
    assert moved > 1e-3, "one SGD step should move the weights visibly"
    for key, value in single["state_dict"].items():
        torch.testing.assert_close(distributed["state_dict"][key], value, rtol=1e-4, atol=1e-6, msg=key)
    # Rank 1's image counts: training on rank 0's image alone gives other weights.
    assert any(
        not torch.allclose(first_image_only["state_dict"][k], single["state_dict"][k], rtol=1e-4, atol=1e-6)
        for k in initial
    )
    assert distributed["record"]["final_losses"]["total_loss"] == pytest.approx(
        single["record"]["final_losses"]["total_loss"], rel=1e-4
    )


def test_resume_equals_straight_run(tmp_path, tiny_tables):
    images, annotations = tiny_tables
    runtime = runtime_config()
    straight_cfg = train_config(tmp_path, max_iter=4)
    straight_cfg["run_name"] = "straight"
    straight = train_from_parameters(images, annotations, 2, TINY_MODEL, straight_cfg, runtime)

    resumed_cfg = train_config(tmp_path, max_iter=2)
    resumed_cfg["run_name"] = "resumed"
    first_half = train_from_parameters(images, annotations, 2, TINY_MODEL, resumed_cfg, runtime)
    assert first_half["record"]["last_checkpoint"].endswith("model_0000002.pth")
    resumed_cfg["solver"]["max_iter"] = 4
    resumed = train_from_parameters(images, annotations, 2, TINY_MODEL, resumed_cfg, runtime)

    assert resumed["record"]["resumed_from_iteration"] == 2
    # Raising max_iter extends the run: allowed, and recorded.
    assert resumed["record"]["resume_changes"] == [{"iteration": 2, "change": "solver.max_iter 2 -> 4"}]
    for key, value in straight["state_dict"].items():
        torch.testing.assert_close(resumed["state_dict"][key], value, rtol=0, atol=0, msg=key)
    loss_columns = [c for c in straight["metrics"][0] if c.startswith("loss") or c in ("total_loss", "lr")]
    for row_straight, row_resumed in zip(straight["metrics"], resumed["metrics"], strict=True):
        assert {c: row_straight[c] for c in loss_columns} == {c: row_resumed[c] for c in loss_columns}
    lines = (tmp_path / "reporting" / "resumed.jsonl").read_text().splitlines()
    assert len(lines) == 4, "the JSON-lines log of a resumed run holds each iteration once"


def test_resume_disabled_refuses_to_mix_with_an_earlier_runs_checkpoints(tmp_path, tiny_tables):
    images, annotations = tiny_tables
    train = train_config(tmp_path, max_iter=1)
    train_from_parameters(images, annotations, 2, TINY_MODEL, train, runtime_config())
    train["checkpoint"]["resume"] = False
    with pytest.raises(FileExistsError, match=r"resume is false but .*holds checkpoints.*model_0000001\.pth"):
        train_from_parameters(images, annotations, 2, TINY_MODEL, train, runtime_config())
    train["run_name"] = "fresh"
    again = train_from_parameters(images, annotations, 2, TINY_MODEL, train, runtime_config())
    assert again["record"]["resumed_from_iteration"] == 0
    assert (tmp_path / "checkpoints" / "test" / "model_0000001.pth").is_file(), (
        "nothing of the old run is lost"
    )


STATIC_MODEL = merged(
    TINY_MODEL, input={"fixed_size": [64, 64]}, static_shapes={"enabled": True, "max_gt_boxes": 2}
)


def test_static_shapes_train_and_refuse_images_with_more_boxes_than_max_gt_boxes(tmp_path, tiny_tables):
    images, annotations = tiny_tables  # 2 boxes per image
    train = train_config(tmp_path, max_iter=2)
    result = train_from_parameters(images, annotations, 2, STATIC_MODEL, train, runtime_config())
    assert len(result["metrics"]) == 2
    assert all(math.isfinite(value) for value in result["record"]["final_losses"].values())
    too_few = merged(STATIC_MODEL, static_shapes={"max_gt_boxes": 1})
    train = train_config(tmp_path, max_iter=2)
    train["run_name"] = "too_few"
    message = r"8 training image\(s\) have more ground-truth boxes than model.static_shapes.max_gt_boxes = 1"
    with pytest.raises(ValueError, match=message):
        train_from_parameters(images, annotations, 2, too_few, train, runtime_config())
    assert not (tmp_path / "checkpoints" / "too_few").exists()


def test_static_training_steps_get_their_batch_made_on_the_host(tmp_path, tiny_tables, monkeypatch):
    """The loop resizes into the canvas before the device: the model's step sees one shape every time."""
    received = []
    forward = StaticFasterRCNN.forward

    def recording(self, images, targets=None):
        received.append((self.training, type(images), tuple(getattr(images, "canvas", images[0]).shape)))
        return forward(self, images, targets)

    monkeypatch.setattr(StaticFasterRCNN, "forward", recording)
    images, annotations = tiny_tables
    train = train_config(tmp_path, max_iter=2)
    train_from_parameters(images, annotations, 2, STATIC_MODEL, train, runtime_config())
    batch = train["images_per_device"]
    steps = [call for call in received if call[0]]
    assert steps == [(True, StaticBatch, (batch, 3, 64, 64))] * 2


class _StepCountingModel(nn.Module):
    """A real model that counts its training steps; a subclass acts at some step in `at_step`."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model
        self.calls = 0

    def forward(self, images, targets):
        self.calls += 1
        return self.at_step(self.calls, images, targets)

    def at_step(self, step: int, images, targets):
        raise NotImplementedError


class _LossTurnsNaN(_StepCountingModel):
    """A real model whose classifier loss becomes NaN from its third training step."""

    def at_step(self, step: int, images, targets):
        losses = self.model(images, targets)
        if step >= 3:
            losses["loss_classifier"] = losses["loss_classifier"] * float("nan")
        return losses


def _nan_model(model_cfg, num_classes):
    return _LossTurnsNaN(build_model(model_cfg, num_classes))


def test_non_finite_loss_stops_naming_iteration_and_losses_keeping_last_checkpoint(tmp_path, tiny_tables):
    images, annotations = tiny_tables
    train = train_config(tmp_path, max_iter=6)
    train["checkpoint"]["period"] = 1
    with pytest.raises(NonFiniteLossError) as raised:
        train_from_parameters(images, annotations, 2, TINY_MODEL, train, runtime_config(), build=_nan_model)
    message = str(raised.value)
    assert "iteration 2" in message and "loss_classifier=nan" in message
    for name in ("loss_box_reg", "loss_objectness", "loss_rpn_box_reg", "total_loss"):
        assert name in message
    manager = CheckpointManager(tmp_path / "checkpoints" / "test")
    assert manager.latest().name == "model_0000002.pth" and "model_0000002.pth" in message
    state = load_checkpoint(manager.latest())
    assert state["iteration"] == 2
    assert all(torch.isfinite(value).all() for value in state["model"].values() if value.is_floating_point())


def test_loss_falls_when_fitting_one_batch(tmp_path):
    """Two demo images, no flips: every step sees the same batch, so the losses must fall far.

    (A dataset-wide 60-step trend is too noisy to assert across CPUs; on one batch the last ten steps'
    mean is 0.34-0.52 of the first ten's over seeds 7-9 here.)
    """
    root = tmp_path / "demo"
    demo.generate_demo_dataset(root, demo.DemoConfig(image_size=64, num_train_images=2, num_val_images=1))
    source = SplitSource("train", demo.annotation_file(root, "train"), demo.image_dir(root, "train"))
    split = read_coco_split(source)
    train = {**train_config(tmp_path, max_iter=60, base_lr=1e-3, warmup_iters=5, steps=[]), "flip_prob": 0.0}
    result = train_from_parameters(
        split.images, split.annotations, len(split.categories), TINY_MODEL, train, runtime_config()
    )
    losses = [row["total_loss"] for row in result["metrics"]]
    assert len(losses) == 60
    assert sum(losses[-10:]) / 10 < 0.7 * sum(losses[:10]) / 10


def test_initial_weights_missing_keys_reported_unknown_keys_refused(caplog):
    torch.manual_seed(0)
    model = build_model(model_params(TINY_MODEL), 2)
    backbone_only = {k: v.clone() + 1 for k, v in model.state_dict().items() if k.startswith("backbone.")}
    with caplog.at_level("WARNING"):
        missing = load_initial_weights(model, backbone_only)
    assert missing and all(not key.startswith("backbone.") for key in missing)
    assert "missing keys keep their initialisation" in caplog.text and "roi_heads.box_head" in caplog.text
    key = next(iter(backbone_only))
    assert torch.equal(model.state_dict()[key], backbone_only[key])

    with pytest.raises(ValueError, match=r"unknown key\(s\) \['head.fc.weight'\]"):
        load_initial_weights(model, {"head.fc.weight": torch.zeros(2)})
    wrong_shape = {key: torch.zeros(3, 3)}
    with pytest.raises(ValueError, match="shape mismatch"):
        load_initial_weights(model, wrong_shape)


@pytest.mark.parametrize(
    ("section", "value", "message"),
    [
        ("runtime", {"nproc_per_nod": 2}, r"runtime.nproc_per_nod: unknown parameter; did you mean"),
        ("train", {"solver": {"max_iter": "abc"}}, r"train.solver.max_iter: 'abc' is not an integer"),
        ("model", {"backbone": {"depth": 152}}, r"model.backbone.depth: 152 is not one of"),
    ],
)
def test_bad_sections_stop_before_any_work(tmp_path, tiny_tables, section, value, message):
    images, annotations = tiny_tables
    sections = {"model": TINY_MODEL, "train": train_config(tmp_path), "runtime": runtime_config()}
    sections[section] = value
    with pytest.raises(ValueError, match=message):
        train_from_parameters(
            images, annotations, 2, sections["model"], sections["train"], sections["runtime"]
        )
    assert not (tmp_path / "checkpoints").exists() and not (tmp_path / "reporting").exists()


def test_channels_last_training_equals_the_default_layout(tmp_path, tiny_tables):
    # runtime.channels_last once tried to make the 3-D per-image tensors NHWC and crashed on the first step.
    images, annotations = tiny_tables
    train = train_config(tmp_path, optimizer="sgd", base_lr=0.02, max_iter=2, warmup_iters=0, steps=[])
    results = {}
    for channels_last in (False, True):
        train["run_name"] = f"channels_last_{channels_last}"
        runtime = runtime_config(channels_last=channels_last, num_threads=1)
        results[channels_last] = train_from_parameters(images, annotations, 2, TINY_MODEL, train, runtime)
    expected, losses = (results[flag]["record"]["final_losses"] for flag in (False, True))
    for name, value in expected.items():
        assert losses[name] == pytest.approx(value, rel=1e-4, abs=1e-6), name
    for key, value in results[False]["state_dict"].items():
        torch.testing.assert_close(results[True]["state_dict"][key], value, rtol=1e-4, atol=1e-5)


def test_a_training_step_with_the_portable_detection_ops_equals_torchvisions(tmp_path, tiny_tables):
    images, annotations = tiny_tables
    train = train_config(tmp_path, optimizer="sgd", base_lr=0.02, max_iter=1, warmup_iters=0, steps=[])
    results, probes = {}, {}
    for setting in ("auto", "portable"):
        train["run_name"] = setting
        with probe_detection_ops(route_torchvision_nms=setting == "portable") as probes[setting]:
            runtime = runtime_config(detection_ops=setting)
            results[setting] = train_from_parameters(images, annotations, 2, TINY_MODEL, train, runtime)

    assert "torchvision" in probes["auto"].namespaces and probes["auto"].portable_roi_align_calls == 0
    portable = probes["portable"]
    assert "torchvision" not in portable.namespaces  # no torchvision kernel ran
    assert portable.portable_roi_align_calls == 4  # one per FPN level of the box pooler
    assert portable.portable_nms_calls >= 2  # the RPN's, at least once per image
    expected, losses = (
        results["auto"]["record"]["final_losses"],
        results["portable"]["record"]["final_losses"],
    )
    assert losses.keys() == expected.keys()
    for name, value in expected.items():
        assert losses[name] == pytest.approx(value, rel=1e-5, abs=1e-7), name
    for key, value in results["auto"]["state_dict"].items():
        torch.testing.assert_close(
            results["portable"]["state_dict"][key], value, rtol=1e-5, atol=1e-7, msg=key
        )


class _SignalledOnRankOne(_StepCountingModel):
    """A real model; in its third training step, rank 1 (only) receives SIGTERM, as from a pre-emption."""

    def at_step(self, step: int, images, targets):
        if step == 3 and torch.distributed.get_rank() == 1:
            os.kill(os.getpid(), signal.SIGTERM)
        return self.model(images, targets)


def _signalled_model(model_cfg, num_classes):
    return _SignalledOnRankOne(build_model(model_cfg, num_classes))


def test_sigterm_on_one_rank_stops_every_rank_after_saving_that_iteration(tmp_path, tiny_tables):
    images, annotations = tiny_tables
    train = train_config(tmp_path, max_iter=50)
    train["images_per_device"] = 1
    runtime = runtime_config(nproc_per_node=2, num_threads=1)
    with pytest.raises(
        TrainingStopped, match=r"after iteration 3 of 50; checkpoint .*model_0000003\.pth saved"
    ):
        train_from_parameters(images, annotations, 2, TINY_MODEL, train, runtime, build=_signalled_model)
    state = load_checkpoint(CheckpointManager(tmp_path / "checkpoints" / "test").latest())
    assert state["iteration"] == 3 and len(state["rng"]) == 2


def test_sync_bn_on_one_process_stops_before_the_data_naming_the_fix(tmp_path, tiny_tables):
    images, annotations = tiny_tables
    model = merged(TINY_MODEL, backbone={"norm": "sync_bn"})
    with pytest.raises(SyncBatchNormError, match=r"has one process.*Set model\.backbone\.norm: bn"):
        train_from_parameters(images, annotations, 2, model, train_config(tmp_path), runtime_config())
    assert not (tmp_path / "reporting").exists()
