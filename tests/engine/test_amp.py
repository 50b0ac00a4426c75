"""Mixed precision: the loss scaler per device (fakes where there is no hardware), static vs dynamic scale,
bf16 on CPU, and clear errors for what cannot run."""

import sys
import types

import pytest
import torch
from tiny_training import TINY_MODEL, runtime_config, train_config, train_from_parameters
from torch import nn

from frcnn_pipeline.config import AmpParams, ParameterError
from frcnn_pipeline.engine import amp as amp_module
from frcnn_pipeline.engine.amp import AmpUnavailableError, MixedPrecision, build_loss_scaler

CPU = torch.device("cpu")
# torch.device("npu") exists only once torch_npu is imported; the selection reads `device.type` alone.
NPU = types.SimpleNamespace(type="npu")


class RecordingScaler:
    """Stands in for a GradScaler class: records how it was built and how update() was called."""

    def __init__(self, *args, **kwargs):
        self.args, self.kwargs, self.updates, self.loaded = args, kwargs, [], None

    def step(self, optimizer):
        optimizer.step()

    def update(self, new_scale=None):
        self.updates.append(new_scale)

    def load_state_dict(self, state):
        self.loaded = state


@pytest.fixture
def fake_torch_npu(monkeypatch):
    """A torch_npu whose `torch_npu.npu.amp.GradScaler` records its use: nothing of Ascend's is imported."""
    package = types.ModuleType("torch_npu")
    npu = types.ModuleType("torch_npu.npu")
    amp = types.ModuleType("torch_npu.npu.amp")
    amp.GradScaler = RecordingScaler
    package.npu, npu.amp = npu, amp
    for name, module in (("torch_npu", package), ("torch_npu.npu", npu), ("torch_npu.npu.amp", amp)):
        monkeypatch.setitem(sys.modules, name, module)


def overflowing_step(scaler) -> tuple[torch.Tensor, nn.Linear]:
    """One scaled step on CPU whose gradient overflows; returns the weight before and the model after."""
    model = nn.Linear(2, 1)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    before = model.weight.detach().clone()
    scaler.backward(model(torch.ones(1, 2)).sum())
    model.weight.grad[0, 0] = float("inf")
    scaler.step(optimizer)
    return before, model


def test_npu_uses_torch_npus_scaler_which_checks_the_overflow_flag(fake_torch_npu):
    scaler = build_loss_scaler("npu", "dynamic")
    assert isinstance(scaler.grad_scaler, RecordingScaler)
    # dynamic=True even for a static scale: torch_npu's dynamic=False would not check for overflow at all.
    assert scaler.grad_scaler.kwargs == {"init_scale": 2.0**16, "dynamic": True}
    assert scaler.static_scale is None

    static = build_loss_scaler("npu", 1024)
    assert static.grad_scaler.kwargs == {"init_scale": 1024.0, "dynamic": True}
    static.step(torch.optim.SGD(nn.Linear(1, 1).parameters(), lr=0.1))
    assert static.grad_scaler.updates == [1024.0]  # the scale is put back, never backed off or grown


def test_npu_selection_through_mixed_precision(fake_torch_npu):
    precision = MixedPrecision(AmpParams(enabled=True, dtype="float16", loss_scale=128.0), NPU)
    assert isinstance(precision.scaler.grad_scaler, RecordingScaler)
    assert precision.describe().startswith("float16 autocast on npu, static 128 loss scale")
    assert MixedPrecision(AmpParams(enabled=True, dtype="bfloat16"), NPU).scaler is None


def test_npu_without_torch_npu_names_the_missing_scaler(monkeypatch):
    monkeypatch.setitem(sys.modules, "torch_npu", None)
    with pytest.raises(AmpUnavailableError, match=r"torch_npu\.npu\.amp\.GradScaler.*cannot be imported"):
        MixedPrecision(AmpParams(enabled=True, dtype="float16"), NPU)


def test_cuda_uses_torch_amp_grad_scaler(monkeypatch):
    monkeypatch.setattr(torch.amp, "GradScaler", RecordingScaler)
    precision = MixedPrecision(AmpParams(enabled=True, dtype="float16"), torch.device("cuda"))
    assert precision.scaler.grad_scaler.args == ("cuda",)
    assert precision.scaler.grad_scaler.kwargs == {"init_scale": 2.0**16}
    assert MixedPrecision(AmpParams(enabled=True, dtype="bfloat16"), torch.device("cuda")).scaler is None


def test_static_loss_scale_stays_static_after_an_overflow_step():
    # torch's GradScaler on CPU is the same class as on CUDA; a CPU model lets the overflow be made by hand.
    static = build_loss_scaler("cpu", 1024)
    before, model = overflowing_step(static)
    assert torch.equal(model.weight.detach(), before), "the overflowing step must be skipped"
    assert static.grad_scaler.get_scale() == 1024.0
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    optimizer.zero_grad()
    static.backward(model(torch.ones(1, 2)).sum())
    static.step(optimizer)
    assert not torch.equal(model.weight.detach(), before) and static.grad_scaler.get_scale() == 1024.0

    dynamic = build_loss_scaler("cpu", "dynamic")
    before, model = overflowing_step(dynamic)
    assert torch.equal(model.weight.detach(), before)
    assert dynamic.grad_scaler.get_scale() == 2.0**15  # backed off: what a static scale must not do


def test_checkpoint_of_torchs_scaler_loads_into_torch_npus(fake_torch_npu):
    state = build_loss_scaler("cpu", "dynamic").state_dict()
    scaler = build_loss_scaler("npu", "dynamic")
    scaler.load_state_dict(state)
    assert scaler.grad_scaler.loaded == {**state, "dynamic": True}


def test_bf16_autocast_on_cpu_trains_without_scaler():
    precision = MixedPrecision(AmpParams(enabled=True, dtype="bfloat16"), CPU)
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
    assert precision.describe() == "bfloat16 autocast on cpu, no loss scaling"


def test_disabled_is_plain_fp32():
    precision = MixedPrecision(AmpParams(enabled=False), CPU)
    with precision.autocast():
        assert nn.Linear(4, 2)(torch.randn(1, 4)).dtype == torch.float32
    assert precision.describe().startswith("fp32")


def test_fp16_on_cpu_is_refused():
    with pytest.raises(AmpUnavailableError, match="use bfloat16"):
        MixedPrecision(AmpParams(enabled=True, dtype="float16"), CPU)


def test_apex_o2_is_refused_with_the_fix_before_apex_is_imported(monkeypatch):
    monkeypatch.setattr(amp_module, "_import_apex_amp", lambda: pytest.fail("imported apex"))
    with pytest.raises(ValueError, match=r"runtime\.amp\.opt_level O2 is not supported.*opt_level: O1"):
        MixedPrecision(AmpParams(enabled=True, backend="apex", opt_level="O2"), CPU)


@pytest.mark.parametrize(
    ("amp", "key"),
    [
        ({"opt_level": "O3"}, "opt_level"),
        ({"loss_scale": "static"}, "loss_scale"),
        ({"loss_scale": 0}, "loss_scale"),
        ({"dtype": "float8"}, "dtype"),
        ({"backend": "deepspeed"}, "backend"),
    ],
)
def test_bad_settings_name_the_key(amp, key):
    # Refused where the parameters are validated: MixedPrecision only ever gets valid ones.
    with pytest.raises(ParameterError, match=rf"^runtime\.amp\.{key}: "):
        AmpParams.parse({"enabled": True, **amp}, "runtime.amp")


def test_apex_asked_for_but_absent(monkeypatch):
    monkeypatch.setitem(sys.modules, "apex", None)
    with pytest.raises(
        AmpUnavailableError, match=r"apex\.amp cannot be imported.*PyPI's `apex` is an unrelated"
    ):
        MixedPrecision(AmpParams(enabled=True, backend="apex"), torch.device("cuda"))


def test_apex_without_cuda_or_npu_is_refused_before_apex_is_imported(monkeypatch):
    monkeypatch.setattr(amp_module, "_import_apex_amp", lambda: pytest.fail("imported apex"))
    with pytest.raises(
        AmpUnavailableError,
        match=r"^runtime\.amp\.backend is 'apex', which needs a CUDA GPU or an Ascend NPU, but this run's "
        r"device is cpu\. Set runtime\.amp\.backend: torch .*, or runtime\.amp\.enabled: false\.$",
    ):
        MixedPrecision(AmpParams(enabled=True, backend="apex", dtype="bfloat16"), CPU)
    assert not MixedPrecision(
        AmpParams(enabled=False, backend="apex"), CPU
    ).enabled  # apex off: nothing to run


def test_training_with_apex_on_cpu_stops_before_the_model_and_the_data(tmp_path, tiny_tables):
    images, annotations = tiny_tables

    def build(model_cfg, num_classes):
        pytest.fail("the model was built")

    runtime = runtime_config(amp={"enabled": True, "backend": "apex", "dtype": "bfloat16"})
    with pytest.raises(AmpUnavailableError, match="needs a CUDA GPU or an Ascend NPU"):
        train_from_parameters(
            images, annotations, 2, TINY_MODEL, train_config(tmp_path), runtime, build=build
        )
    assert not (tmp_path / "reporting").exists()
