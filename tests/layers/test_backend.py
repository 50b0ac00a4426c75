"""Choosing the detection ops' implementation per op and device, logged once; the setting is checked."""

from __future__ import annotations

import importlib.util
import logging

import pytest
import torch

from frcnn_pipeline.layers import backend, kernel_report

LOGGER = "frcnn_pipeline.layers.backend"


@pytest.mark.parametrize("op", ["nms", "roi_align"])
def test_cpu_takes_torchvisions_kernel(op):
    assert backend.has_torchvision_kernel(op, "cpu")
    assert backend.choose(op, "cpu") == backend.TORCHVISION


@pytest.mark.parametrize("op", ["nms", "roi_align"])
def test_the_portable_setting_wins_everywhere(op):
    backend.configure("portable")
    assert backend.choose(op, "cpu") == backend.PORTABLE
    assert backend.choose(op, "cpu", npu_native=True) == backend.PORTABLE


def test_a_device_without_a_kernel_takes_the_portable_ops():
    assert not backend.has_torchvision_kernel("roi_align", "no_such_device")
    assert not backend.has_torchvision_kernel("no_such_op", "cpu")
    assert backend.choose("roi_align", "no_such_device") == backend.PORTABLE
    # The PrivateUse1 key (where torch_npu and torchvision_npu register) has no torchvision kernel here.
    assert not backend.has_torchvision_kernel("nms", "privateuseone")
    assert backend.choose("nms", "privateuseone") == backend.PORTABLE


@pytest.mark.skipif(importlib.util.find_spec("torch_npu") is not None, reason="torch_npu is installed")
def test_npu_without_torch_npu_or_torchvision_npu_takes_the_portable_ops():
    assert backend.choose("nms", "npu") == backend.PORTABLE
    assert backend.choose("roi_align", "npu", npu_native=True) == backend.PORTABLE


def test_npu_with_torch_npu_takes_its_op_only_where_the_semantics_match(monkeypatch):
    monkeypatch.setattr(backend, "_torch_npu_available", lambda: True)
    monkeypatch.setattr(backend, "_import_torchvision_npu", lambda: False)
    assert backend.choose("roi_align", "npu", npu_native=True) == backend.TORCH_NPU
    assert backend.choose("roi_align", "npu", npu_native=False) == backend.PORTABLE
    backend.configure("portable")
    assert backend.choose("roi_align", "npu", npu_native=True) == backend.PORTABLE


def test_npu_takes_torchvisions_kernel_once_torchvision_npu_registered_it(monkeypatch):
    imported = []
    monkeypatch.setattr(backend, "_import_torchvision_npu", lambda: imported.append(True) or True)
    monkeypatch.setattr(backend, "has_torchvision_kernel", lambda op, device_type: bool(imported))
    assert backend.choose("roi_align", "npu", npu_native=True) == backend.TORCHVISION


def test_each_choice_is_logged_once_per_configuration(caplog):
    caplog.set_level(logging.INFO, logger=LOGGER)
    for _ in range(3):
        backend.choose("roi_align", "cpu")
        backend.choose("nms", "cpu")
    messages = [record.getMessage() for record in caplog.records if record.name == LOGGER]
    assert messages == [
        f"Detection op {op} on cpu: torchvision implementation (torchvision::{op} has a kernel for cpu)"
        for op in ("roi_align", "nms")
    ]
    backend.configure("portable")  # a new worker's configuration logs again
    backend.choose("nms", "cpu")
    backend.choose("nms", "cpu")
    assert [record.getMessage() for record in caplog.records if record.name == LOGGER][2:] == [
        "Detection op nms on cpu: portable implementation (runtime.detection_ops is portable)"
    ]


def test_an_unknown_setting_is_refused_naming_the_key_and_the_choices():
    with pytest.raises(ValueError, match=r"runtime.detection_ops is 'fast'; expected one of auto, portable"):
        backend.configure("fast")


def test_torchvisions_own_kernels_are_not_probed():
    def verify(implementation):
        pytest.fail(f"probed {implementation}")

    assert backend.choose("roi_align", "cpu", variant="aligned=True", verify=verify) == backend.TORCHVISION


def test_describe_reports_each_ops_choice_on_the_device_and_why():
    cpu = torch.device("cpu")
    assert kernel_report.describe(cpu) == {
        "nms": "torchvision (torchvision::nms has a kernel for cpu)",
        "roi_align (aligned=True)": "torchvision (torchvision::roi_align has a kernel for cpu)",
        "roi_align (aligned=False)": "torchvision (torchvision::roi_align has a kernel for cpu)",
    }
    backend.configure("portable")
    assert set(kernel_report.describe(cpu).values()) == {"portable (runtime.detection_ops is portable)"}
