"""The hardware smoke test runs here on CPU (tiny model and images) so it cannot rot; it fails clearly: on a
CPU fallback, on a tensor off the target device, and on a rank that stalls (faults from smoke_faults.py)."""

import argparse
import importlib
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import smoke_faults
import torch

BENCHMARKS = Path(__file__).resolve().parents[2] / "benchmarks"
TINY_RUN = ["--device", "cpu", "--tiny", "--size", "64x80", "--size", "80x64", "--iterations", "2"]
TINY_RUN += ["--eval-images", "2", "--num-workers", "0", "--precision", "fp32"]
# main() with a fault from smoke_faults, in a fresh process: where the fault is a hang.
FAULTY_MAIN = (
    "import sys, smoke_accelerator, smoke_faults; sys.exit(smoke_accelerator.main(sys.argv[2:], {}))"
)


@pytest.fixture(scope="module")
def smoke():
    with pytest.MonkeyPatch.context() as patch:
        patch.syspath_prepend(str(BENCHMARKS))
        yield importlib.import_module("smoke_accelerator")


@pytest.fixture(scope="module")
def setup(smoke):
    return importlib.import_module("smoke_setup")


def test_cpu_run_passes_and_writes_the_whole_report(smoke, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)  # from any folder: the report still holds the detection-op log lines
    monkeypatch.setenv("TORCH_NPU_DISABLED_WARNING", "1")
    report_path = tmp_path / "report.json"
    argv = [*TINY_RUN, "--report", str(report_path)]
    assert smoke.main(argv) == 0
    assert os.environ["TORCH_NPU_DISABLED_WARNING"] == "1"  # set to 0 for the run only
    report = json.loads(report_path.read_text())
    assert list(report) == [
        "command", "arguments", "started_at", "installation", "devices", "detection_ops", "precision",
        "watch", "config", "train", "eval", "fallbacks", "log", "verdict", "reason",
    ]  # fmt: skip
    assert report["verdict"] == "PASS" and report["reason"].startswith("trained 2 iterations (fp32")
    assert "at 2 sizes" in report["reason"] and report["reason"].endswith("no CPU fallback")
    assert report["arguments"]["report"] == str(report_path) and report["arguments"]["env"] == "npu1p"
    assert report["arguments"]["sizes"] == [[64, 80], [80, 64]] and report["arguments"]["timeout"] == 120
    installation = report["installation"]
    assert installation["torch"] == torch.__version__ and installation["torch_npu"] is None
    assert installation["apex"] is False and "cann" not in installation
    assert report["devices"] == {
        "kind": "cpu", "count": 1, "name": report["devices"]["name"], "used": 1, "distributed_backend": None
    }  # fmt: skip
    kernel = "torchvision (torchvision::{} has a kernel for cpu)"
    assert report["detection_ops"] == {
        "torchvision": {"nms": "torchvision kernel", "roi_align": "torchvision kernel"},
        "frcnn_pipeline.layers": {
            "nms": kernel.format("nms"),
            "roi_align (aligned=True)": kernel.format("roi_align"),
            "roi_align (aligned=False)": kernel.format("roi_align"),
        },
    }
    assert report["precision"] == {
        "description": "fp32 (runtime.amp.enabled: false)", "source": "--precision fp32"
    }  # fmt: skip
    assert report["watch"] == {
        "target_device": "cpu",
        "fallbacks": "Python warnings and file descriptor 2 (torch_npu prints its fallbacks from C++), "
        "TORCH_NPU_DISABLED_WARNING=0",
        "stall_timeout_s": 120.0,
        "process_group_timeout_s": 240.0,
    }
    # The env's model with an input size that takes both sizes as they are; the R-18 of --tiny.
    assert report["config"]["model"]["input"]["min_size_train"] == [64]
    assert report["config"]["model"]["input"]["max_size"] == 80
    assert report["config"]["model"]["backbone"]["depth"] == 18
    assert report["config"]["runtime"]["device"] == "cpu" and report["config"]["train"]["run_name"] == "smoke"
    assert report["config"]["runtime"]["timeout_minutes"] == 4
    train = report["train"]
    assert train["iterations"] == 2 and train["images_per_iteration"] == 2 and len(train["losses"]) == 2
    assert len(train["total_loss"]) == 2 and all(math.isfinite(loss) for loss in train["total_loss"])
    assert 0 < train["trainable_tensors_changed"] <= train["trainable_tensors"]
    assert train["final_loss_scale"] is None and train["initialisation"].startswith("random, 20 frozen norms")
    assert train["images_per_s"] > 0 and train["peak_memory_mb"] > 0 and train["wall_s"] > 0
    assert train["image_sizes"] == ["64x80", "80x64"] and train["batch_shapes"]
    [checks] = train["device_checks"]
    assert checks["rank"] == 0 and checks["target"] == "cpu" and checks["steps_checked"] == 2
    # Parameters, their gradients, buffers, SGD's momentum: more tensors than trainable ones.
    assert (
        checks["tensors_checked_per_step"] > 2 * train["trainable_tensors"] and checks["modules_watched"] > 50
    )
    evaluation = report["eval"]
    assert evaluation["images"] == 2 and evaluation["images_per_size"] == {"64x80": 1, "80x64": 1}
    assert (
        evaluation["images_per_s_including_setup"] > 0 and evaluation["inference_options"]["batch_size"] >= 1
    )
    assert report["fallbacks"] == []
    assert "INFO frcnn_pipeline.layers.backend: Detection op nms on cpu: torchvision implementation " in (
        "\n".join(report["log"])
    )
    output = capsys.readouterr().out
    assert (
        "detection ops (runtime.detection_ops: auto):\n  nms: torchvision (torchvision::nms has a" in output
    )
    assert "total loss per iteration:" in output and "train image sizes: 64x80, 80x64;" in output
    assert "device checks, rank 0: the outputs of" in output and "CPU fallbacks: none" in output
    assert output.rstrip().splitlines()[-1].startswith("VERDICT: PASS")
    assert sorted(path.name for path in tmp_path.iterdir()) == ["report.json"]  # nothing else written here
    with pytest.raises(SystemExit):  # an earlier report is never overwritten
        smoke.parse_args([*TINY_RUN, "--report", str(report_path)])


def test_fallback_warnings_fail_the_run_naming_the_op_and_where(smoke, tmp_path, capsys):
    report_path = tmp_path / "fallback.json"
    assert smoke.main([*TINY_RUN, "--report", str(report_path)], smoke_faults.report_fallbacks) == 1
    report = json.loads(report_path.read_text())
    assert report["verdict"] == "FAIL" and "eval" in report  # the whole run, to list every fallback
    assert report["reason"] == (
        "CPU fallback: 2 op(s) ran on the CPU: "
        f"UserWarning: {smoke_faults.PYTHON_FALLBACK} (rank 0, iteration 1, forward, in roi_heads.box_head), "
        "aten::smoke_injected_op (training)"
    )
    python_warning, npu_line = report["fallbacks"]
    assert python_warning == {
        "op": None,
        "where": "rank 0, iteration 1, forward, in roi_heads.box_head",
        "source": "python warning",
        "message": f"UserWarning: {smoke_faults.PYTHON_FALLBACK}",
    }
    assert npu_line == {
        "op": "aten::smoke_injected_op",
        "where": "training",
        "source": "stderr",
        "message": smoke_faults.TORCH_NPU_FALLBACK_LINE.decode().strip(),
    }
    output = capsys.readouterr().out
    assert "CPU fallbacks: 2\n" in output and "  aten::smoke_injected_op during training [stderr]: " in output
    assert output.rstrip().splitlines()[-1].startswith("VERDICT: FAIL: CPU fallback: 2 op(s)")


def test_a_tensor_off_the_target_device_fails_the_run_naming_it(smoke, tmp_path):
    report_path = tmp_path / "drift.json"
    argv = [*TINY_RUN, "--report", str(report_path)]
    assert smoke.main(argv, smoke_faults.move_box_predictor_output_to_meta) == 1
    report = json.loads(report_path.read_text())
    drift = (
        "rank 0, iteration 1, forward, in roi_heads: the output of roi_heads.box_predictor is not all on "
        "cpu, the device this run targets: output[0] on meta; output[1] on meta."
    )
    assert report["reason"].startswith(f"train: device: {drift}")
    assert report["train"]["ranks"][0]["drift"].startswith(drift) and "eval" not in report


def _run_faulty(fault: str, argv: list[str], tmp_path: Path) -> subprocess.CompletedProcess:
    paths = [str(BENCHMARKS), str(Path(smoke_faults.__file__).parent), *sys.path]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(paths), "TMPDIR": str(tmp_path)}
    command = [sys.executable, "-c", FAULTY_MAIN.format(f"smoke_faults.{fault}"), "--", *argv]
    return subprocess.run(command, env=env, capture_output=True, text=True, timeout=300, check=False)


def test_a_rank_that_never_enters_the_collective_stops_the_run_naming_it(tmp_path):
    report_path = tmp_path / "stall.json"
    argv = [
        *TINY_RUN,
        "--nproc-per-node",
        "2",
        "--batch",
        "1",
        "--timeout",
        "10",
        "--report",
        str(report_path),
    ]
    run = _run_faulty("hang_rank_one_before_the_collectives", argv, tmp_path)
    assert run.returncode == 1, run.stderr[-3000:]
    report = json.loads(report_path.read_text())
    reason = report["reason"]
    # The watchdog (10 s) ended it, well before the process group's timeout (20 s) and its 30 minutes.
    assert reason.startswith("train: stalled: no progress for 1"), reason
    assert (
        "rank 1 at iteration 1 (forward) stalled and never reached the collective that rank 0 waits in"
        in reason
    )
    rank0, rank1 = report["stall"]["ranks"]
    assert report["stall"]["message"] == reason.removeprefix("train: stalled: ")
    assert report["train"]["error"].startswith("WorkerFailedError: ")  # the launcher saw its ranks killed
    assert rank0["state"].startswith("waits in a collective: "), rank0
    assert rank1["state"].startswith(
        "outside any collective, in _never_return (tests/benchmarks/smoke_faults.py:"
    )
    assert rank1["stack"][0].endswith("in _never_return")
    assert run.stdout.rstrip().splitlines()[-1].startswith("VERDICT: FAIL: train: stalled: ")


def test_a_single_rank_that_stalls_is_reported_and_the_run_ends(tmp_path):
    report_path = tmp_path / "stall.json"
    (tmp_path / "tmp").mkdir()
    argv = [*TINY_RUN, "--timeout", "10", "--report", str(report_path)]
    run = _run_faulty("hang_in_the_first_forward", argv, tmp_path / "tmp")
    assert run.returncode == 1, run.stderr[-3000:]
    report = json.loads(report_path.read_text())
    assert report["reason"].startswith("train: stalled: no progress for 1")
    assert "rank 0 at iteration 1 (forward) stalled outside any collective" in report["reason"]
    [rank0] = report["stall"]["ranks"]
    assert rank0["state"].startswith(
        "outside any collective, in _never_return (tests/benchmarks/smoke_faults.py:"
    )
    assert "VERDICT: FAIL: train: stalled: " in run.stdout
    assert not list((tmp_path / "tmp").glob("frcnn_smoke_*"))  # its working folder is removed


def test_the_report_goes_under_data_by_default(smoke):
    report = smoke.parse_args(["--device", "cpu"]).report
    assert report.parent == smoke.PROJECT_ROOT / "data" / "08_reporting" / "smoke"
    assert report.name.startswith("smoke_cpu_") and report.suffix == ".json"


def test_two_sizes_at_least_and_enough_iterations_for_them(smoke, capsys):
    assert smoke.parse_args(["--device", "npu"]).sizes == [(800, 1333), (1067, 800)]
    for argv, message in [
        (["--size", "64x80"], "give two --size or more"),
        (["--size", "64x80", "--size", "64x80"], "give two --size or more"),
        (["--size", "64x80", "--size", "80x64", "--iterations", "1"], "at least the number of sizes (2)"),
        (["--size", "64x80x3", "--size", "80x64"], "--size must be HxW"),
        (["--timeout", "0"], "--timeout must be positive"),
    ]:
        with pytest.raises(SystemExit):
            smoke.parse_args(["--device", "cpu", *argv])
        assert message in capsys.readouterr().err


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


def test_cpu_turns_the_envs_float16_into_bfloat16(setup):
    args = argparse.Namespace(precision="env", device="cpu", env="npu1p")
    amp, note = setup.precision_config({"enabled": True, "dtype": "float16"}, args)
    assert amp["dtype"] == "bfloat16" and "bfloat16 on CPU" in note
    amp, _ = setup.precision_config(
        {"enabled": True, "dtype": "float16"}, argparse.Namespace(**{**vars(args), "device": "npu"})
    )
    assert amp["dtype"] == "float16"


def test_static_shapes_pad_to_one_square_holding_the_images(smoke, setup, tmp_path):
    params = setup.env_parameters("npu1p")
    params["model"]["input"]["fixed_size"] = [1344, 1344]
    args = smoke.parse_args(["--device", "npu", "--report", str(tmp_path / "r.json")])
    configs = setup.smoke_configs(params, args, tmp_path)
    assert configs["model"]["input"]["fixed_size"] == [1344, 1344]  # the card's padded size
    assert (
        configs["model"]["input"]["min_size_train"] == [800] and configs["model"]["input"]["max_size"] == 1333
    )
    assert configs["train"]["solver"]["max_iter"] == 20 and configs["train"]["solver"]["epochs"] is None
    assert configs["runtime"]["device"] == "npu" and configs["runtime"]["amp"]["dtype"] == "float16"
    assert configs["runtime"]["timeout_minutes"] == 4  # twice the default --timeout of 120 s
