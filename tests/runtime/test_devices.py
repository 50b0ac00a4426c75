"""Device resolution: clear errors for missing NPUs/GPUs, never a silent CPU run."""

import sys
import types

import pytest
import torch
from torch.utils.data import DataLoader, TensorDataset

from frcnn_pipeline.runtime import devices


@pytest.fixture
def no_torch_npu(monkeypatch):
    # A None entry makes `import torch_npu` raise ImportError, as on a machine without it.
    monkeypatch.setitem(sys.modules, "torch_npu", None)


def test_npu_without_torch_npu_says_what_is_missing_and_how_to_install(no_torch_npu):
    with pytest.raises(devices.DeviceUnavailableError) as raised:
        devices.resolve_device_kind("npu")
    message = str(raised.value)
    assert "torch_npu cannot be imported" in message
    assert devices.npu_install_hint() in message and "--env base" in message


def test_install_hint_names_the_pairing_that_exists():
    hint = devices.npu_install_hint("2.3.1+cpu")
    assert "`pip install torch_npu==2.3.1.post6`" in hint and "CANN 8.1.RC1" in hint
    assert devices.ASCEND_COMPATIBILITY_TABLE in hint


def test_install_hint_for_a_torch_without_torch_npu_points_to_the_table_and_a_downgrade():
    hint = devices.npu_install_hint("2.14.1+cu130")
    assert "torch_npu==2.14.1" not in hint  # no such release: torch_npu releases lag torch's
    assert "torch 2.14.1 has no torch_npu pairing known to this project" in hint
    assert devices.ASCEND_COMPATIBILITY_TABLE in hint and "downgraded" in hint
    assert "`pip install torch==2.9.0 torch_npu==2.9.0` with CANN 8.5.0" in hint


def test_npu_with_torch_npu_but_no_device_is_an_error(monkeypatch):
    monkeypatch.setitem(sys.modules, "torch_npu", type(sys)("torch_npu"))
    monkeypatch.setattr(
        torch, "npu", type("FakeNpu", (), {"device_count": staticmethod(lambda: 0)}), raising=False
    )
    monkeypatch.setenv("ASCEND_RT_VISIBLE_DEVICES", "")
    with pytest.raises(devices.DeviceUnavailableError, match="sees no NPU"):
        devices.resolve_device_kind("npu")


def test_cuda_build_without_a_visible_gpu_points_to_the_driver_not_the_install(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(torch.version, "cuda", "12.4")
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")
    with pytest.raises(devices.DeviceUnavailableError) as raised:
        devices.resolve_device_kind("cuda")
    message = str(raised.value)
    assert "is a CUDA 12.4 build but sees no GPU (CUDA_VISIBLE_DEVICES=)" in message
    assert "nvidia-smi" in message and "Install a CUDA build" not in message


def test_cpu_only_torch_asked_for_cuda_says_to_install_a_cuda_build(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(torch.version, "cuda", None)
    monkeypatch.setattr(torch.version, "hip", None)
    with pytest.raises(devices.DeviceUnavailableError, match=r"is a CPU-only build\. Install a CUDA build"):
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


def test_loader_pins_for_the_training_device_wherever_torch_takes_it():
    npu, cuda = types.SimpleNamespace(type="npu"), torch.device("cuda", 1)
    # torch 2.3/2.4 (torch_npu's pairings): without the device the DataLoader pins for CUDA only.
    for version in ("2.3.1", "2.4.0+cpu", "2.8.0"):
        assert devices.loader_pinning(npu, True, version) == {"pin_memory": True, "pin_memory_device": "npu"}
        assert devices.loader_pinning(cuda, True, version) == {
            "pin_memory": True,
            "pin_memory_device": "cuda",
        }
    # From 2.9 torch pins for the current accelerator and ignores the argument, with a warning.
    assert devices.loader_pinning(npu, True, "2.9.0") == {"pin_memory": True}
    assert devices.loader_pinning(npu, False, "2.3.1") == {"pin_memory": False}  # runtime.pin_memory: false
    assert devices.loader_pinning(torch.device("cpu"), True, "2.3.1") == {"pin_memory": False}


def test_the_loader_accepts_the_pinning_arguments_of_this_torch():
    arguments = devices.loader_pinning(torch.device("cuda"), True)
    loader = DataLoader(TensorDataset(torch.arange(4.0)), batch_size=2, **arguments)
    assert loader.pin_memory and loader.pin_memory_device == arguments.get("pin_memory_device", "")
