"""Hardware smoke test: does the project's training and evaluation path run on this machine's accelerator?

    python benchmarks/smoke_accelerator.py --device npu          # Ascend: torch_npu, CANN, HCCL for >1 device
    python benchmarks/smoke_accelerator.py --device cuda         # NVIDIA: CUDA, NCCL for >1 device
    python benchmarks/smoke_accelerator.py --device npu --nproc-per-node 8   # the 8-device path as well
    python benchmarks/smoke_accelerator.py --device cpu --iterations 2 --eval-images 2 \
        --size 320x480 --size 480x320

1. Checks the installation: torch, torchvision, torch_npu and CANN (npu), torchvision_npu, apex, the devices
   and whether torchvision's NMS / RoIAlign kernels run on the device.
2. Trains the env's model (default `--env npu1p`/`gpu1p`: detectron2's R-50-FPN, random init) for
   `--iterations` on synthetic images of every `--size` (two at least) with the env's mixed precision, through
   the same training loop as `kedro run --pipeline train`. Every module's outputs and, after every optimizer
   step, the parameters, buffers, gradients and optimizer state must be on the target device.
3. Evaluates `--eval-images` more synthetic images through the evaluate pipeline's inference.
4. Throughout, watches for CPU fallbacks (Python warnings, and torch_npu's, printed from C++ to stderr), and
   stops a run where no rank moves for `--timeout` seconds, naming the rank that stalled and the step.
5. Prints images/s, peak memory, the implementation of each detection op, the precision, the loss per
   iteration and a verdict line, and writes a JSON report (data/08_reporting/smoke/ unless --report says
   otherwise). Attach the report and the console log to an issue.

Exit status: 0 PASS, 1 FAIL (the reason is printed and in the report), 2 bad arguments.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import platform
import shutil
import signal
import sys
import tempfile
import traceback
from collections.abc import Callable
from datetime import datetime
from pathlib import Path
from typing import Any

import smoke_checks
from smoke_report import summary_lines, write_report
from smoke_setup import (
    PROCESS_GROUP_TIMEOUT_FACTOR,
    PROJECT_ROOT,
    SmokeFailure,
    env_parameters,
    smoke_configs,
)
from torch import nn

from frcnn_pipeline.config import AmpParams
from frcnn_pipeline.engine.amp import MixedPrecision
from frcnn_pipeline.layers import backend as detection_ops
from frcnn_pipeline.runtime import devices
from frcnn_pipeline.runtime.fallback_watch import (
    TORCH_NPU_WARNINGS_VARIABLE,
    FallbackWarnings,
    StderrCapture,
    merge,
)
from frcnn_pipeline.runtime.installation import describe_detection_ops, describe_installation

REPORT_DIR = PROJECT_ROOT / "data" / "08_reporting" / "smoke"  # data/ is git-ignored
DEFAULT_ENVS = {"npu": "npu1p", "cuda": "gpu1p", "cpu": "npu1p"}
# COCO's largest input (a landscape photo at 800/1333) and a 640x480 portrait photo at 800: two padded shapes.
DEFAULT_SIZES = ("800x1333", "1067x800")
DEFAULT_TIMEOUT_S = 120.0


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", choices=("npu", "cuda", "cpu"), required=True)
    parser.add_argument("--iterations", type=int, default=20)
    parser.add_argument("--eval-images", type=int, default=10)
    parser.add_argument(
        "--size",
        action="append",
        metavar="HxW",
        help=f"a synthetic image size; give two or more (default: {' and '.join(DEFAULT_SIZES)})",
    )
    parser.add_argument("--env", help="Kedro env whose model/train/runtime/evaluate parameters are used")
    parser.add_argument("--batch", type=int, help="images per device (default: the env's)")
    parser.add_argument("--nproc-per-node", type=int, default=1, help="devices to train and evaluate on")
    parser.add_argument("--num-workers", type=int, help="DataLoader workers (default: the env's)")
    parser.add_argument(
        "--precision",
        choices=("env", "fp32", "fp16", "bf16"),
        default="env",
        help="env: the env's runtime.amp (float16 becomes bfloat16 on CPU)",
    )
    parser.add_argument(
        "--timeout",
        type=float,
        default=DEFAULT_TIMEOUT_S,
        help="seconds without progress on any rank before the run stops as stalled (the process group's "
        f"timeout is {PROCESS_GROUP_TIMEOUT_FACTOR}x this)",
    )
    parser.add_argument("--tiny", action="store_true", help="a small R-18 instead of the env's model")
    parser.add_argument(
        "--report", help="JSON report path (default: data/08_reporting/smoke/smoke_<device>_<time>.json)"
    )
    args = parser.parse_args(argv)
    args.sizes = []
    for text in args.size or DEFAULT_SIZES:
        try:
            height, width = (int(side) for side in text.lower().split("x"))
        except ValueError:
            parser.error(f"--size must be HxW, e.g. 800x1333, got {text!r}")
        if (height, width) not in args.sizes:
            args.sizes.append((height, width))
    if len(args.sizes) < 2:
        parser.error("give two --size or more: the smoke test runs images of at least two sizes")
    if min(*(min(size) for size in args.sizes), args.iterations, args.eval_images, args.nproc_per_node) < 1:
        parser.error("--size, --iterations, --eval-images and --nproc-per-node must be positive")
    if min(args.iterations, args.eval_images) < len(args.sizes):
        parser.error(
            f"--iterations and --eval-images must be at least the number of sizes ({len(args.sizes)})"
        )
    if args.timeout <= 0:
        parser.error("--timeout must be positive")
    args.env = args.env or DEFAULT_ENVS[args.device]
    stamp = datetime.now().strftime("%Y%m%d-%H%M%S")
    args.report = Path(args.report) if args.report else REPORT_DIR / f"smoke_{args.device}_{stamp}.json"
    if args.report.exists():
        parser.error(
            f"{args.report} exists: choose another --report (an earlier report is never overwritten)"
        )
    return args


class RecordCollector(logging.Handler):
    """Keeps the project's log records: the detection-op choices (once per process) and every warning."""

    def __init__(self):
        super().__init__(logging.INFO)
        self.records: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        if record.name.startswith("frcnn_pipeline.layers") or record.levelno >= logging.WARNING:
            self.records.append(f"{record.levelname} {record.name}: {record.getMessage()}")


class SmokeRun:
    """One smoke run: its report, what watches it (fallbacks, stalls) and its verdict."""

    def __init__(
        self, args: argparse.Namespace, workdir: Path, instrument: Callable[[nn.Module], None] | None
    ):
        self.args = args
        self.workdir = workdir
        self.instrument = instrument
        self.phase = "start-up"
        self.stderr = StderrCapture(workdir / "stderr.log")
        self.warnings = FallbackWarnings(lambda: self.phase)
        self.collector = RecordCollector()
        self.report: dict[str, Any] = {"command": [sys.executable, *sys.argv], "arguments": {**vars(args)}}
        self.report["arguments"]["report"] = str(args.report)
        self.report["started_at"] = datetime.now().isoformat(timespec="seconds")

    def enter(self, phase: str) -> None:
        self.phase = phase
        self.stderr.mark(phase)

    def execute(self) -> int:
        project_logger = logging.getLogger("frcnn_pipeline")
        level = project_logger.level
        if project_logger.getEffectiveLevel() > logging.INFO:
            # Outside the project folder Kedro's default logging config (not conf/logging.yml) leaves the
            # project at WARNING, and the console and the report would lose the detection-op choices.
            project_logger.setLevel(logging.INFO)
        project_logger.addHandler(self.collector)
        try:
            with self.stderr, self.warnings:
                try:
                    reason, passed = self.run(), True
                except SmokeFailure as failure:
                    passed, reason = False, str(failure.args[0])
                except Exception as error:  # a smoke test reports whatever stopped the run
                    passed, reason = False, f"{type(error).__name__}: {error}"
                    self.report["traceback"] = traceback.format_exc()
        finally:
            project_logger.removeHandler(self.collector)
            project_logger.setLevel(level)
        return self.finish(passed, reason)

    def run(self) -> str:
        """Fill the report step by step; return the PASS reason or raise SmokeFailure."""
        args, report = self.args, self.report
        self.enter("installation and op probe")
        report["installation"] = describe_installation(args.device)
        try:
            kind = devices.resolve_device_kind(args.device)
            devices.check_device_count(kind, args.nproc_per_node)
        except devices.DeviceUnavailableError as error:
            raise SmokeFailure(f"device: {error}") from error
        device = devices.setup_device(kind, 0)
        module = devices.device_module(device)
        report["devices"] = {
            "kind": kind,
            "count": devices.device_count(kind),
            "name": module.get_device_name(0) if module is not None else platform.processor() or "cpu",
            "used": args.nproc_per_node,
            "distributed_backend": devices.dist_backend(kind) if args.nproc_per_node > 1 else None,
        }
        configs = smoke_configs(env_parameters(args.env), args, self.workdir)
        # As the training worker will: the env's runtime.detection_ops decides what the report describes.
        detection_ops.configure(configs["runtime"]["detection_ops"])
        report["detection_ops"] = describe_detection_ops(device)
        precision = MixedPrecision(AmpParams.parse(configs["runtime"]["amp"], "runtime.amp"), device)
        report["precision"] = {"description": precision.describe(), "source": configs["precision_note"]}
        report["watch"] = {
            "target_device": kind,
            "fallbacks": "Python warnings and file descriptor 2 (torch_npu prints its fallbacks from C++), "
            f"{TORCH_NPU_WARNINGS_VARIABLE}={os.environ.get(TORCH_NPU_WARNINGS_VARIABLE)}",
            "stall_timeout_s": args.timeout,
            "process_group_timeout_s": configs["runtime"]["timeout_minutes"] * 60,
        }
        report["config"] = {key: configs[key] for key in ("model", "train", "runtime")}
        self.enter("training")
        try:
            report["train"] = smoke_checks.train_check(
                configs, args, self.workdir, self.instrument, self.stop_stalled_run
            )
        except SmokeFailure as failure:
            report["train"] = failure.args[1] if len(failure.args) > 1 else {}
            raise SmokeFailure(f"train: {failure.args[0]}") from failure
        state_dict = report["train"].pop("state_dict")
        self.enter("evaluation")
        try:
            report["eval"] = smoke_checks.eval_check(state_dict, configs, args, self.workdir)
        except SmokeFailure as failure:
            report["eval"] = failure.args[1] if len(failure.args) > 1 else {}
            raise SmokeFailure(f"eval: {failure.args[0]}") from failure
        train = report["train"]
        return (
            f"trained {train['iterations']} iterations ({report['precision']['description']}) on "
            f"{args.nproc_per_node} {kind} device(s) at {len(args.sizes)} sizes, losses finite, "
            f"{train['trainable_tensors_changed']}/{train['trainable_tensors']} trainable tensors updated, "
            f"every step's tensors on {kind}; evaluated {report['eval']['images']} images; no CPU fallback"
        )

    def stop_stalled_run(self, message: str, ranks: list[dict[str, Any]]) -> None:
        """The stall watchdog's call (its thread): stop the stalled ranks; the verdict names them."""
        self.report["stall"] = {"message": message, "ranks": ranks}
        if self.args.nproc_per_node == 1:
            # The stalled rank is this process's main thread: report from here and leave.
            self.finish(False, f"train: stalled: {message}")
            shutil.rmtree(self.workdir, ignore_errors=True)
            os._exit(1)
        for state in ranks:
            if "pid" in state:
                with contextlib.suppress(ProcessLookupError):  # it died meanwhile
                    os.kill(state["pid"], signal.SIGKILL)

    def finish(self, passed: bool, reason: str) -> int:
        """Add what the watchers found, write the report, print the summary and the verdict."""
        self.stderr.restore()
        fallbacks = merge(
            smoke_checks.rank_fallbacks(self.workdir), self.warnings.found, self.stderr.fallbacks()
        )
        report = self.report
        report["fallbacks"] = fallbacks
        if passed and fallbacks:
            named = ", ".join(
                f"{entry['op'] or entry['message'][:120]} ({entry['where']})" for entry in fallbacks
            )
            passed, reason = False, f"CPU fallback: {len(fallbacks)} op(s) ran on the CPU: {named}"
        report["log"] = list(self.collector.records)
        report["verdict"] = "PASS" if passed else "FAIL"
        report["reason"] = reason
        write_report(self.args.report, report)
        for line in summary_lines(report, self.args):
            print(line)
        if "traceback" in report:
            print(report["traceback"], file=sys.stderr)
        print(f"report: {self.args.report} (attach it and this console log to an issue)")
        print(f"VERDICT: {report['verdict']}: {reason}", flush=True)
        return 0 if passed else 1


def main(argv: list[str] | None = None, instrument: Callable[[nn.Module], None] | None = None) -> int:
    """`instrument(model)` runs on each worker's model after the watch is attached (tests inject faults)."""
    args = parse_args(argv)
    if not logging.getLogger().handlers:
        logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    # torch_npu silences its warnings, the fallback ones included, when this is 1 (read on its first warning).
    silenced = os.environ.get(TORCH_NPU_WARNINGS_VARIABLE)
    os.environ[TORCH_NPU_WARNINGS_VARIABLE] = "0"
    try:
        with tempfile.TemporaryDirectory(prefix="frcnn_smoke_") as tmp:
            return SmokeRun(args, Path(tmp), instrument).execute()
    finally:
        if silenced is None:
            del os.environ[TORCH_NPU_WARNINGS_VARIABLE]
        else:
            os.environ[TORCH_NPU_WARNINGS_VARIABLE] = silenced


if __name__ == "__main__":
    sys.exit(main())
