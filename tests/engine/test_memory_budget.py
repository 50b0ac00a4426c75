"""A training step's memory estimate (a lower bound, checked against real steps) and the start-up refusal of
sizes that cannot fit."""

from __future__ import annotations

import re
import time

import pytest
import torch
from bench_memory import measured_peak
from model_configs import model_params
from tiny_training import TINY_MODEL, merged, runtime_config, train_config, train_from_parameters

from frcnn_pipeline.config import RuntimeParams, TrainParams
from frcnn_pipeline.engine.memory_budget import (
    InsufficientMemoryError,
    available_memory,
    check_training_memory,
    estimate_training_step,
    largest_training_input,
)
from frcnn_pipeline.errors import UserFacingError

ABSURD = merged(TINY_MODEL, input={"min_size_train": [20000], "max_size": 20000})
DEMO_LIKE = {
    "backbone": {"depth": 18, "norm": "bn", "freeze_at": 0, "fpn_channels": 64},
    "roi_heads": {"batch_size_per_image": 64, "fc_dim": 256},
}


def _inputs(**values):
    return model_params({"input": values}).input


def test_largest_training_input_is_the_padded_short_and_long_side_caps():
    assert largest_training_input(_inputs(min_size_train=[640, 800], max_size=1333)) == (800, 1344)
    # The long side caps the short one: a square image is at most max_size x max_size.
    assert largest_training_input(_inputs(min_size_train=[20000], max_size=1333)) == (1344, 1344)
    unpadded = _inputs(min_size_train=[96], max_size=100, size_divisibility=1)
    assert largest_training_input(unpadded) == (96, 100)
    assert largest_training_input(_inputs(fixed_size=[1344, 1024])) == (1344, 1024)


def test_estimate_counts_activations_per_image_and_pixel_and_the_optimizer_state():
    one = estimate_training_step(model_params(DEMO_LIKE), 3, 1)
    two = estimate_training_step(model_params(DEMO_LIKE), 3, 2)
    # Per image, but for a few per-batch tensors (BN's batch statistics).
    assert two.activation_bytes == pytest.approx(2 * one.activation_bytes, rel=1e-4)
    assert two.model_bytes == one.model_bytes
    large = merged(DEMO_LIKE, input={"min_size_train": [1600], "max_size": 2666})
    quadrupled = estimate_training_step(model_params(large), 3, 1)
    assert quadrupled.input_size == (1600, 2688) and one.input_size == (800, 1344)
    assert 3.9 < quadrupled.activation_bytes / one.activation_bytes < 4.0  # the box head's part is fixed
    assert estimate_training_step(model_params(DEMO_LIKE), 3, 1, mixed_precision=True).activation_bytes == (
        one.activation_bytes // 2
    )
    # AdamW keeps two fp32 states per trainable parameter, SGD with momentum one, plain SGD none.
    adamw = estimate_training_step(model_params(DEMO_LIKE), 3, 1, optimizer="adamw").model_bytes
    plain = estimate_training_step(model_params(DEMO_LIKE), 3, 1, momentum=0.0).model_bytes
    assert adamw - one.model_bytes == one.model_bytes - plain > 0


def test_estimate_is_a_lower_bound_of_a_measured_training_step():
    size, images = 256, 2
    cfg = merged(DEMO_LIKE, input={"min_size_train": [size], "max_size": size})
    measured = measured_peak(cfg, size, images, steps=2)
    estimate = estimate_training_step(model_params(cfg), 3, images).total_bytes
    # Alone, the peak is 1.06-1.24x the estimate (benchmarks/bench_memory.py); inside the whole suite the
    # allocator's state has been seen at 4.3x. The refusal relies on the lower bound only; the upper one says
    # the estimate is not off by an order of magnitude.
    assert estimate <= measured < 10 * estimate, (estimate, measured)


def test_cpu_memory_is_what_the_system_reports_available():
    limit, source = available_memory(torch.device("cpu"))
    import psutil

    assert 0 < limit <= psutil.virtual_memory().total
    assert source in {"of RAM available", "left under this container's memory limit (cgroup memory.max)"}


def _written(folder) -> list[str]:
    """The files under ``folder`` (a released run lock leaves none)."""
    return [str(path) for path in folder.rglob("*") if path.is_file()]


def _refusal(tmp_path, tiny_tables, model_cfg, nproc: int) -> tuple[BaseException, float]:
    images, annotations = tiny_tables
    started = time.monotonic()
    with pytest.raises(InsufficientMemoryError) as refused:
        train_from_parameters(
            images,
            annotations,
            2,
            model_cfg,
            train_config(tmp_path),
            runtime_config(nproc_per_node=nproc, num_threads=1),
        )
    return refused.value, time.monotonic() - started


def test_an_absurd_size_is_refused_at_start_in_seconds_and_nothing_is_written(tmp_path, tiny_tables):
    error, seconds = _refusal(tmp_path, tiny_tables, ABSURD, nproc=1)
    assert seconds < 30, "refused at start-up, not after training began"
    message = str(error)
    assert isinstance(error, UserFacingError) and "\n" not in message and len(message) < 500
    assert message.startswith(
        "A training step at model.input min_size_train [20000], max_size 20000 (padded 20000x20000) with "
        "train.images_per_device 2 needs at least "
    )
    assert "GiB of RAM available" in message or "cgroup" in message
    assert "Fix: lower model.input.max_size / min_size_train: one image of about " in message
    assert _written(tmp_path) == [], "no checkpoint, no metrics"


def test_spawned_cpu_workers_refuse_with_the_same_error(tmp_path, tiny_tables):
    error, _ = _refusal(tmp_path, tiny_tables, ABSURD, nproc=2)
    assert "for the 2 CPU workers of runtime.nproc_per_node" in str(error)
    assert _written(tmp_path) == []


def test_the_fix_names_the_batch_that_fits_or_the_fixed_size():
    limit, _ = available_memory(torch.device("cpu"))
    per_image = estimate_training_step(model_params(TINY_MODEL), 2, 1).activation_bytes
    too_many = 2 * limit // per_image + 1
    train = train_config_for(images_per_device=too_many)
    with pytest.raises(InsufficientMemoryError) as refused:
        check_training_memory(model_params(TINY_MODEL), 2, train, _runtime(), torch.device("cpu"))
    fitting = re.search(r"Fix: lower train.images_per_device to at most (\d+), ", str(refused.value))
    assert fitting and 1 <= int(fitting[1]) < too_many
    fixed = merged(TINY_MODEL, input={"fixed_size": [20000, 20000]})
    with pytest.raises(InsufficientMemoryError) as refused:
        check_training_memory(model_params(fixed), 2, train_config_for(), _runtime(), torch.device("cpu"))
    assert "model.input fixed_size [20000, 20000] (padded 20000x20000)" in str(refused.value)
    assert "Fix: lower model.input.fixed_size: one image of about " in str(refused.value)


def test_a_size_that_fits_passes_and_reports_its_estimate():
    train = train_config_for(images_per_device=2)
    step = check_training_memory(model_params(TINY_MODEL), 2, train, _runtime(), torch.device("cpu"))
    assert step.input_size == (64, 64) and step.images == 2 and 0 < step.total_bytes < 2**30


def train_config_for(**values):
    return TrainParams.parse(
        {"images_per_device": 1, "solver": {"optimizer": "sgd", "momentum": 0.9}, **values}, "train"
    )


def _runtime():
    return RuntimeParams.parse(runtime_config(), "runtime")
