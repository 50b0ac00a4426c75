"""The smoke test's watch on a training step: progress records, fallback warnings with their module, and every
tensor of the step on the target device."""

import json
import warnings
from contextlib import contextmanager

import pytest
import torch
from torch import nn

from frcnn_pipeline.engine.step_audit import DeviceDriftError, RankAudit, rank_record_path

CPU = torch.device("cpu")


class WarnsOfAFallback(nn.Module):
    def forward(self, x):
        warnings.warn("this op falls back to CPU", stacklevel=1)
        return x


class Elsewhere(nn.Module):
    def forward(self, x):
        return {"moved": x.to("meta"), "kept": x}


@contextmanager
def watched(folder):
    """Created in the test itself: pytest's own warning capture of the test would replace the audit's."""
    model = nn.Sequential(nn.Linear(3, 4), WarnsOfAFallback(), nn.Linear(4, 2)).train()
    audit = RankAudit(model, folder, CPU, spawned=False)
    try:
        yield model, audit
    finally:
        audit.close()


def _step(model: nn.Module, optimizer: torch.optim.Optimizer) -> None:
    optimizer.zero_grad()
    model(torch.ones(2, 3)).sum().backward()
    optimizer.step()


def test_a_step_is_recorded_and_every_tensor_checked(tmp_path):
    with watched(tmp_path) as (model, _):
        _step(model, torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9))
    record = json.loads(rank_record_path(tmp_path, 0).read_text())
    assert record["rank"] == 0 and record["iteration"] == 1 and record["phase"] == "stepped"
    # 4 parameters, their 4 gradients and 4 momentum buffers.
    assert record["steps_checked"] == 1 and record["tensors_checked_per_step"] == 12
    assert record["modules_watched"] == 4 and record["drift"] is None
    [fallback] = record["fallbacks"]
    assert fallback["where"] == "rank 0, iteration 1, forward, in 1"
    assert fallback["message"] == "UserWarning: this op falls back to CPU"


def test_optimizer_state_off_the_device_is_named(tmp_path):
    with watched(tmp_path) as (model, audit):
        optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
        _step(model, optimizer)
        state = optimizer.state[model[0].weight]
        state["momentum_buffer"] = state["momentum_buffer"].to("meta")
        with pytest.raises(
            DeviceDriftError, match=r"not all on cpu.*: optimizer state 'momentum_buffer' of 0\.w"
        ):
            audit.check_step(optimizer)


def test_a_module_output_off_the_device_stops_the_forward_naming_it(tmp_path):
    model = nn.Sequential(nn.Linear(3, 4), Elsewhere()).train()
    audit = RankAudit(model, tmp_path, CPU, spawned=False)
    try:
        with pytest.raises(DeviceDriftError) as raised:
            model(torch.ones(2, 3))
    finally:
        audit.close()
    assert str(raised.value).startswith(
        "rank 0, iteration 1, forward, in model: the output of 1 is not all on cpu, the device this run "
        "targets: output['moved'] on meta. "
    )
    assert json.loads(rank_record_path(tmp_path, 0).read_text())["drift"] == str(raised.value)
