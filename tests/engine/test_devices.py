"""Device resolution: clear errors for missing NPUs/GPUs, never a silent CPU run."""

import sys

import pytest
import torch

from frcnn_pipeline.engine import devices


@pytest.fixture
def no_torch_npu(monkeypatch):
    # A None entry makes `import torch_npu` raise ImportError, as on a machine without it.
    monkeypatch.setitem(sys.modules, "torch_npu", None)


def test_npu_without_torch_npu_says_what_is_missing_and_how_to_install(no_torch_npu):
    with pytest.raises(devices.DeviceUnavailableError) as raised:
        devices.resolve_device_kind("npu")
    message = str(raised.value)
    assert "torch_npu cannot be imported" in message
    assert "pip install torch_npu" in message and "CANN" in message and "--env base" in message


def test_npu_with_torch_npu_but_no_device_is_an_error(monkeypatch):
    monkeypatch.setitem(sys.modules, "torch_npu", type(sys)("torch_npu"))
    monkeypatch.setattr(
        torch, "npu", type("FakeNpu", (), {"device_count": staticmethod(lambda: 0)}), raising=False
    )
    monkeypatch.setenv("ASCEND_RT_VISIBLE_DEVICES", "")
    with pytest.raises(devices.DeviceUnavailableError, match="sees no NPU"):
        devices.resolve_device_kind("npu")


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_cuda_without_gpu_is_an_error():
    with pytest.raises(devices.DeviceUnavailableError, match="sees no CUDA GPU"):
        devices.resolve_device_kind("cuda")


def test_auto_falls_back_in_order_and_unknown_kind_is_refused(no_torch_npu):
    assert devices.resolve_device_kind("auto") == ("cuda" if torch.cuda.is_available() else "cpu")
    assert devices.resolve_device_kind("cpu") == "cpu"
    with pytest.raises(ValueError, match=r"runtime\.device must be one of"):
        devices.resolve_device_kind("tpu")


def test_backends_and_device_count_check():
    assert [devices.dist_backend(k) for k in ("npu", "cuda", "cpu")] == ["hccl", "nccl", "gloo"]
    devices.check_device_count("cpu", 4)  # CPU workers share the cores
    if not torch.cuda.is_available():
        with pytest.raises(devices.DeviceUnavailableError, match="only 0 cuda device"):
            devices.check_device_count("cuda", 8)


def test_rng_states_round_trip():
    device = torch.device("cpu")
    states = devices.rng_states(device)
    first = torch.rand(3)
    devices.set_rng_states(device, states)
    assert torch.equal(torch.rand(3), first)
