"""Mixed precision: bf16 autocast on CPU, clear errors for what cannot run here."""

import sys

import pytest
import torch
from torch import nn

from frcnn_pipeline.engine.amp import AmpUnavailableError, MixedPrecision

CPU = torch.device("cpu")


def test_bf16_autocast_on_cpu_trains_without_scaler():
    precision = MixedPrecision({"enabled": True, "dtype": "bfloat16"}, CPU)
    model = nn.Linear(4, 2)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    with precision.autocast():
        output = model(torch.randn(3, 4))
    assert output.dtype == torch.bfloat16
    before = model.weight.detach().clone()
    precision.backward(output.float().pow(2).mean(), optimizer)
    precision.step(optimizer)
    assert not torch.equal(before, model.weight)
    assert precision.state_dict() == {"scaler": {}}


def test_disabled_is_plain_fp32():
    precision = MixedPrecision({"enabled": False}, CPU)
    with precision.autocast():
        assert nn.Linear(4, 2)(torch.randn(1, 4)).dtype == torch.float32


def test_fp16_on_cpu_is_refused():
    with pytest.raises(AmpUnavailableError, match="use bfloat16"):
        MixedPrecision({"enabled": True, "dtype": "float16"}, CPU)


def test_apex_asked_for_but_absent(monkeypatch):
    monkeypatch.setitem(sys.modules, "apex", None)
    with pytest.raises(
        AmpUnavailableError, match=r"apex\.amp cannot be imported.*PyPI's `apex` is an unrelated"
    ):
        MixedPrecision({"enabled": True, "backend": "apex"}, CPU)
