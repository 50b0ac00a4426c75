"""The installation report: versions, CANN from the toolkit's info file, and which op kernels run."""

import sys

import pytest
import torch
import torchvision

from frcnn_pipeline.runtime import installation

CPU = torch.device("cpu")


@pytest.fixture
def no_torch_npu(monkeypatch):
    monkeypatch.setitem(sys.modules, "torch_npu", None)


def test_cann_version_read_from_the_toolkit_info_file(no_torch_npu, tmp_path, monkeypatch):
    info = tmp_path / "aarch64-linux" / "ascend_toolkit_install.info"
    info.parent.mkdir()
    info.write_text("package_name=Ascend-cann-toolkit\nversion=8.1.RC1\narch=aarch64\n")
    monkeypatch.setenv("ASCEND_TOOLKIT_HOME", str(tmp_path))
    assert installation.cann_version() == {"version": "8.1.RC1", "source": str(info)}


def test_npu_report_without_torch_npu_says_what_is_missing(no_torch_npu, monkeypatch):
    monkeypatch.delenv("ASCEND_TOOLKIT_HOME", raising=False)
    monkeypatch.delenv("ASCEND_HOME_PATH", raising=False)
    report = installation.describe_installation("npu")
    assert report["torch"] == torch.__version__ and report["torchvision"] == torchvision.__version__
    assert report["torch_npu"] is None
    assert "npu_install_hint" in report and "cann" in report
    assert "cann" not in installation.describe_installation("cpu")


def test_detection_ops_report_kernels_that_run_and_those_that_do_not(monkeypatch):
    assert installation.probe_torchvision_ops(CPU) == {
        "nms": "torchvision kernel",
        "roi_align": "torchvision kernel",
    }

    def no_kernel(*args, **kwargs):
        raise NotImplementedError(
            "Could not run 'torchvision::nms' with arguments from the 'PrivateUse1' backend."
        )

    monkeypatch.setattr(torchvision.ops, "nms", no_kernel)
    probed = installation.probe_torchvision_ops(CPU)
    assert (
        probed["nms"]
        == "none: Could not run 'torchvision::nms' with arguments from the 'PrivateUse1' backend."
    )
    assert probed["roi_align"] == "torchvision kernel"


def test_an_op_without_a_kernel_for_the_device_is_not_run():
    # torch_npu would run it on the CPU through its fallback, which only warns: the probe must not be fooled.
    assert installation.probe_torchvision_ops(torch.device("xpu")) == {
        "nms": "none: no torchvision::nms kernel is registered for xpu",
        "roi_align": "none: no torchvision::roi_align kernel is registered for xpu",
    }


def test_a_kernel_whose_result_comes_back_elsewhere_does_not_count(monkeypatch):
    roi_align = torchvision.ops.roi_align
    monkeypatch.setattr(torchvision.ops, "roi_align", lambda *a, **k: roi_align(*a, **k).to("meta"))
    probed = installation.probe_torchvision_ops(CPU)
    assert probed == {
        "nms": "torchvision kernel",
        "roi_align": "none: its result is on meta, not cpu (it ran elsewhere)",
    }
