"""The demo trained and evaluated in the dynamic mode (the default), then in the static-shape mode.

Copies the project (code and conf, no data) to two temporary folders and runs the default `kedro run` in
each: once as configured, once with an env that turns `model.static_shapes` on and pads every batch to
`model.input.fixed_size` (96 × 96: the demo resizes its 128 px images to 96 px). Prints both box APs, both
wall times and the differences; the target is an AP within 1 point (0.01) of the dynamic mode's.

    python benchmarks/bench_static_shapes.py [--keep DIR] [--params "train.solver.max_iter=600"]
"""

from __future__ import annotations

import argparse
import json
import shutil
import tempfile
from pathlib import Path

from bench_demo import copy_project, kedro_run, latest_coco_metrics

STATIC_ENV = "static_shapes"
STATIC_MODEL = """model:
  input:
    fixed_size: [96, 96]     # the demo's resized images: 96 px (min_size_train and min_size_test)
  static_shapes:
    enabled: true
"""
TARGET_AP_GAP = 0.01


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


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--keep", type=Path, help="run in this folder (created) and keep it")
    parser.add_argument("--params", help="extra --params for both runs, e.g. train.solver.max_iter=600")
    args = parser.parse_args()

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
