"""The demo trained and evaluated in the dynamic mode (the default), then in the static-shape mode.

Copies the project (code and conf, no data) to two temporary folders and runs the default `kedro run` in
each: once as configured, once with an env that turns `model.static_shapes` on and pads every batch to
`model.input.fixed_size` (96 × 96: the demo resizes its 128 px images to 96 px). Prints both box APs, both
wall times and the differences; the target is an AP within 1 point (0.01) of the dynamic mode's.

`--trace` instead records `--steps` training steps (forward, backward, SGD step) of a small model on batches
of images of different sizes and object counts (`modeling.step_trace`), in the dynamic mode and in the
static mode (its step from the batch's `host_batch`, and the whole call from the images), on the detection
ops of `--detection-ops` (portable: an NPU's without torchvision_npu) on `--device`. Prints each step's op
count, whether its (op, shapes) sequence equals the first step's, its data-dependent ops by kind, and where
the first step's come from.

    python benchmarks/bench_static_shapes.py [--keep DIR] [--params "train.solver.max_iter=600"]
    python benchmarks/bench_static_shapes.py --trace [--device npu] [--detection-ops auto]
"""

from __future__ import annotations

import argparse
import importlib
import json
import shutil
import tempfile
from collections import Counter
from pathlib import Path

import torch
from bench_demo import copy_project, kedro_run, latest_coco_metrics

from frcnn_pipeline.config import ModelParams
from frcnn_pipeline.layers import backend
from frcnn_pipeline.modeling import build_model
from frcnn_pipeline.modeling.step_trace import StepTrace, traced_training_step

STATIC_ENV = "static_shapes"
STATIC_MODEL = """model:
  input:
    fixed_size: [96, 96]     # the demo's resized images: 96 px (min_size_train and min_size_test)
  static_shapes:
    enabled: true
"""
TARGET_AP_GAP = 0.01
# --trace: the demo's backbone at a small size; a fixed RoIAlign grid and the static mode as the npu envs.
TRACE_MODEL = {
    "backbone": {"depth": 18, "norm": "bn", "freeze_at": 0, "fpn_channels": 32},
    "input": {"min_size_train": [64, 80], "min_size_test": 80, "max_size": 128, "fixed_size": [128, 128]},
    "anchors": {"sizes": [16, 32, 64, 128, 256]},
    "rpn": {"batch_size_per_image": 128, "pre_nms_topk_train": 500, "post_nms_topk_train": 500},
    "roi_heads": {"batch_size_per_image": 64, "fc_dim": 64, "pooler_sampling_ratio": 2},
    "static_shapes": {"max_gt_boxes": 16},
}
TRACE_IMAGES = (((96, 128), (120, 90)), ((128, 128), (70, 110)), ((64, 100), (100, 64)))
TRACE_OBJECTS = ((0, 0), (1, 2), (9, 4))


def run_mode(workdir: Path, static: bool, params: str | None) -> dict[str, float]:
    copy_project(workdir)
    args = ["--params", params] if params else []
    if static:
        (workdir / "conf" / STATIC_ENV).mkdir()
        (workdir / "conf" / STATIC_ENV / "parameters_model.yml").write_text(STATIC_MODEL)
        args += ["--env", STATIC_ENV]
    wall = kedro_run(workdir, *args)
    metrics = latest_coco_metrics(workdir)
    [record] = (workdir / "data" / "08_reporting" / "train" / "training_run.json").glob("*/training_run.json")
    training = json.loads(record.read_text())
    return {"AP": metrics["AP"], "AP50": metrics["AP50"], "wall": wall, "train": training["wall_time_s"]}


def trace_batch(step: int) -> tuple[list[torch.Tensor], list[dict[str, torch.Tensor]]]:
    generator = torch.Generator().manual_seed(step)
    images, targets = [], []
    for (height, width), count in zip(TRACE_IMAGES[step % 3], TRACE_OBJECTS[step % 3], strict=True):
        size = torch.tensor([width, height])
        corners = torch.rand(count, 2, generator=generator) * size * 0.6
        sides = 12 + 30 * torch.rand(count, 2, generator=generator)
        boxes = torch.cat([corners, torch.minimum(corners + sides, size)], dim=1)
        images.append(torch.randint(0, 255, (3, height, width), dtype=torch.uint8, generator=generator))
        targets.append({"boxes": boxes, "labels": torch.randint(1, 3, (count,), generator=generator)})
    return images, targets


def trace_mode(mode: str, steps: int, device: torch.device) -> list[StepTrace]:
    """`steps` traced training steps; mode: dynamic, static (from the host batch) or static (whole call)."""
    config = json.loads(json.dumps(TRACE_MODEL))
    config["static_shapes"]["enabled"] = mode != "dynamic"
    torch.manual_seed(0)
    model = build_model(ModelParams.parse(config, "model"), num_classes=2).to(device).train()
    optimizer = torch.optim.SGD(model.parameters(), lr=1e-3)
    traces = []
    for step in range(steps):
        images, targets = trace_batch(step)
        if mode == "static (from the host batch)":  # made on the host, then on the device before the step
            inputs = (model.transform.host_batch(images, targets).to(device),)
        else:
            inputs = (
                [image.to(device) for image in images],
                [{k: v.to(device) for k, v in t.items()} for t in targets],
            )
        traces.append(traced_training_step(model, optimizer, inputs))
    return traces


def print_traces(mode: str, traces: list[StepTrace]) -> None:
    for step, trace in enumerate(traces, 1):
        kinds = Counter(what.split(" (")[-1].rstrip(")") for what, _ in trace.flagged)
        same = "-" if step == 1 else ("yes" if trace.ops == traces[0].ops else "no")
        listed = ", ".join(f"{kind} {count}" for kind, count in sorted(kinds.items())) or "none"
        print(f"{mode:30}{step:>5}{len(trace.ops):>8}{same:>10}{len(trace.flagged):>8}   {listed}")
    for (what, where), count in sorted(traces[0].flagged_counts().items(), key=lambda item: item[0][1]):
        print(f"{'':35}{count:>4} × {what} at {where}")


def trace_main(args: argparse.Namespace) -> None:
    backend.configure(args.detection_ops)
    device = torch.device(args.device)
    if device.type == "npu":
        importlib.import_module("torch_npu")  # registers the device
    print(f"{'mode':30}{'step':>5}{'ops':>8}{'same ops':>10}{'flagged':>8}   data-dependent ops by kind")
    for mode in ("dynamic", "static (whole call)", "static (from the host batch)"):
        print_traces(mode, trace_mode(mode, args.steps, device))


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--keep", type=Path, help="run in this folder (created) and keep it")
    parser.add_argument("--params", help="extra --params for both runs, e.g. train.solver.max_iter=600")
    parser.add_argument("--trace", action="store_true", help="trace training steps instead (see above)")
    parser.add_argument("--steps", type=int, default=3, help="--trace: steps per mode")
    parser.add_argument("--device", default="cpu", help="--trace: cpu, cuda, npu (import torch_npu first)")
    parser.add_argument("--detection-ops", choices=backend.SETTINGS, default="portable", help="--trace")
    args = parser.parse_args()
    if args.trace:
        trace_main(args)
        return

    root = args.keep or Path(tempfile.mkdtemp(prefix="frcnn_static_"))
    try:
        results = {}
        for mode in ("dynamic", "static"):
            workdir = root / mode
            workdir.mkdir(parents=True, exist_ok=True)
            results[mode] = run_mode(workdir, mode == "static", args.params)
    finally:
        if args.keep is None:
            shutil.rmtree(root, ignore_errors=True)

    dynamic, static = results["dynamic"], results["static"]
    print(f"\n{'':28}{'dynamic':>10}{'static':>10}{'static-dyn':>12}{'ratio':>8}")
    for key, label, fmt in (
        ("AP", "box AP (0.5:0.95)", ".3f"),
        ("AP50", "AP50", ".3f"),
        ("train", "train wall time (s)", ".1f"),
        ("wall", "kedro run wall time (s)", ".1f"),
    ):
        a, b = dynamic[key], static[key]
        print(f"{label:28}{a:10{fmt}}{b:10{fmt}}{b - a:+12{fmt}}{b / a if a else float('nan'):8.2f}")
    gap = abs(static["AP"] - dynamic["AP"])
    print(f"AP gap {gap:.3f} {'within' if gap <= TARGET_AP_GAP else 'NOT within'} the target {TARGET_AP_GAP}")


if __name__ == "__main__":
    main()
