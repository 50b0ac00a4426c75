"""The hardware smoke test runs here on CPU (tiny model and images) so it cannot rot; it fails clearly."""

import argparse
import importlib.util
import json
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[2] / "benchmarks" / "smoke_accelerator.py"


@pytest.fixture(scope="module")
def smoke():
    spec = importlib.util.spec_from_file_location("smoke_accelerator", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_cpu_run_passes_and_writes_the_report(smoke, tmp_path, capsys):
    report_path = tmp_path / "report.json"
    argv = ["--device", "cpu", "--tiny", "--size", "64x80", "--iterations", "2", "--eval-images", "2"]
    argv += ["--num-workers", "0", "--precision", "fp32", "--report", str(report_path)]
    assert smoke.main(argv) == 0
    report = json.loads(report_path.read_text())
    assert report["verdict"] == "PASS"
    assert report["train"]["iterations"] == 2 and len(report["train"]["total_loss"]) == 2
    assert report["train"]["trainable_tensors_changed"] > 0
    assert report["eval"]["images"] == 2
    assert report["detection_ops"]["torchvision"] == {
        "nms": "torchvision kernel",
        "roi_align": "torchvision kernel",
    }
    assert report["precision"]["description"].startswith("fp32")
    # The env's model with the requested input size; the R-18 of --tiny.
    assert report["config"]["model"]["input"]["min_size_train"] == [64]
    assert report["config"]["model"]["input"]["max_size"] == 80
    output = capsys.readouterr().out
    assert "total loss per iteration:" in output and output.rstrip().splitlines()[-1].startswith(
        "VERDICT: PASS"
    )
    with pytest.raises(SystemExit):  # an earlier report is never overwritten
        smoke.parse_args([*argv[:-2], "--report", str(report_path)])


def test_npu_without_torch_npu_fails_with_the_install_hint(smoke, tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "torch_npu", None)
    report_path = tmp_path / "npu.json"
    assert smoke.main(["--device", "npu", "--report", str(report_path)]) == 1
    report = json.loads(report_path.read_text())
    assert report["verdict"] == "FAIL"
    assert report["reason"].startswith("device: runtime.device is 'npu' but torch_npu cannot be imported")
    assert report["installation"]["torch_npu"] is None
    assert report["installation"]["cann"]["version"] is None
    assert "VERDICT: FAIL: device:" in capsys.readouterr().out


def test_cpu_turns_the_envs_float16_into_bfloat16(smoke):
    args = argparse.Namespace(precision="env", device="cpu", env="npu1p")
    amp, note = smoke.precision_config({"enabled": True, "dtype": "float16"}, args)
    assert amp["dtype"] == "bfloat16" and "bfloat16 on CPU" in note
    amp, _ = smoke.precision_config(
        {"enabled": True, "dtype": "float16"}, argparse.Namespace(**{**vars(args), "device": "npu"})
    )
    assert amp["dtype"] == "float16"


def test_static_shapes_pad_to_one_square_holding_the_image(smoke, tmp_path):
    params = smoke.env_parameters("npu1p")
    params["model"]["input"]["fixed_size"] = [1344, 1344]
    args = smoke.parse_args(["--device", "npu", "--size", "800x1333", "--report", str(tmp_path / "r.json")])
    configs = smoke.smoke_configs(params, args, tmp_path)
    assert configs["model"]["input"]["fixed_size"] == [1344, 1344]  # the card's padded size
    assert configs["train"]["solver"]["max_iter"] == 20 and configs["train"]["solver"]["epochs"] is None
    assert configs["runtime"]["device"] == "npu" and configs["runtime"]["amp"]["dtype"] == "float16"
