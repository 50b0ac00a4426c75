"""The README's first command, end to end: `kedro run` on the demo from nothing, timed, and its box AP.

Copies the project (code and conf, no data) to a temporary folder so the run starts fresh, runs the default
pipeline there, and prints the wall time and the COCO metrics next to the targets (<= 10 minutes,
AP >= 0.5). A second `kedro run --only-missing-outputs` shows what a repeat costs.

    python benchmarks/bench_demo.py [--keep DIR] [--params "train.solver.max_iter=600"]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

PROJECT = Path(__file__).resolve().parents[1]
TARGET_SECONDS = 600.0
TARGET_AP = 0.5


def copy_project(destination: Path) -> None:
    ignore = shutil.ignore_patterns("__pycache__", "*.egg-info")
    for name in ("pyproject.toml", "README.md", ".telemetry"):
        shutil.copy2(PROJECT / name, destination / name)
    shutil.copytree(PROJECT / "src", destination / "src", ignore=ignore)
    shutil.copytree(PROJECT / "conf", destination / "conf", ignore=shutil.ignore_patterns("local"))
    (destination / "conf" / "local").mkdir()
    (destination / "data").mkdir()


def kedro_run(project: Path, *args: str) -> float:
    env = {**os.environ, "KEDRO_DISABLE_TELEMETRY": "1", "PYTHONPATH": str(project / "src")}
    started = time.perf_counter()
    subprocess.run([sys.executable, "-m", "kedro", "run", *args], cwd=project, env=env, check=True)
    return time.perf_counter() - started


def latest_coco_metrics(project: Path) -> dict[str, float]:
    """The 12 metrics of the newest evaluation of the val split (reports are versioned by run)."""
    runs = sorted((project / "data/08_reporting/evaluate/val/coco_metrics.json").glob("*/coco_metrics.json"))
    if not runs:
        raise FileNotFoundError(f"no evaluate.val.coco_metrics under {project}: did evaluate run?")
    return json.loads(runs[-1].read_text())["metrics"]


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--keep", type=Path, help="run in this folder (created) and keep it")
    parser.add_argument("--params", help="extra --params for the first run, e.g. train.solver.max_iter=600")
    args = parser.parse_args()

    workdir = args.keep or Path(tempfile.mkdtemp(prefix="frcnn_demo_"))
    workdir.mkdir(parents=True, exist_ok=True)
    copy_project(workdir)
    try:
        first = kedro_run(workdir, *(["--params", args.params] if args.params else []))
        repeat = kedro_run(workdir, "--only-missing-outputs")
        metrics = latest_coco_metrics(workdir)
    finally:
        if args.keep is None:
            shutil.rmtree(workdir, ignore_errors=True)

    print(f"\n{'':28}{'ours':>10}{'target':>10}{'ratio':>8}")
    print(f"{'kedro run wall time (s)':28}{first:10.1f}{TARGET_SECONDS:10.0f}{first / TARGET_SECONDS:8.2f}")
    print(f"{'box AP (0.5:0.95)':28}{metrics['AP']:10.3f}{TARGET_AP:10.2f}{metrics['AP'] / TARGET_AP:8.2f}")
    print(f"{'AP50':28}{metrics['AP50']:10.3f}")
    print(f"{'repeat, --only-missing (s)':28}{repeat:10.1f}")
    met = first <= TARGET_SECONDS and metrics["AP"] >= TARGET_AP
    print(f"targets {'met' if met else 'NOT met'}")


if __name__ == "__main__":
    main()
