"""Several nodes on 127.0.0.1, as users start them: `kedro run` per node (by hand, under a faked SLURM step,
under torchrun), sharing one project folder as on a cluster's shared filesystem. What the multinode tests
(test_multinode_training.py, test_multinode_stops.py) share: the tiny env's categories and parameters, and
starting, finishing and reading back such runs. The project they run in is conftest.py's `project`."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pandas as pd

from frcnn_pipeline.framework.parameter_docs import load_parameters

# Guards against hangs; the runs themselves take seconds to a minute on two busy cores.
RUN_BOUND_S = 300
CATEGORIES = pd.DataFrame(
    {"label": [0, 1], "category_id": [1, 2], "name": ["red", "green"], "supercategory": ["box", "box"]}
)


def tiny_parameters(project: Path) -> dict:
    return load_parameters("tiny", conf_source=project / "conf")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def kedro_run(project: Path, pipeline: str, params: str = "", launcher: list[str] | None = None,
              env: dict[str, str] | None = None) -> subprocess.Popen:  # fmt: skip
    command = [*(launcher or [sys.executable]), "-m", "kedro", "run", "--pipeline", pipeline, "--env", "tiny"]
    return subprocess.Popen(
        [*command, "--params", params] if params else command,
        cwd=project,
        env={**os.environ, "KEDRO_DISABLE_TELEMETRY": "1", "MPLBACKEND": "Agg", "PYTHONUNBUFFERED": "1",
             "COLUMNS": "250",
             "PYTHONPATH": os.pathsep.join([str(project / "src"), *sys.path]), **(env or {})},
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )  # fmt: skip


def two_nodes(rank: int, port: int) -> str:
    return f"runtime.num_nodes=2,runtime.node_rank={rank},runtime.master_port={port}"


def finish(*processes: subprocess.Popen) -> list[str]:
    outputs = [process.communicate(timeout=RUN_BOUND_S)[0] for process in processes]
    failed = [f"process {index}:\n{output[-5000:]}" for index, (process, output)
              in enumerate(zip(processes, outputs, strict=True)) if process.returncode != 0]  # fmt: skip
    assert not failed, "\n\n".join(failed)
    return outputs


def run_log(project: Path, output: str) -> str:
    """Every line of the run whose console `output` this is (Kedro's per-dataset lines, the workers' detail
    lines); the run's closing summary names the file."""
    marker = "every line of this run: "
    name = next(line.split(marker)[1].split()[0] for line in output.splitlines() if marker in line)
    return (project / name).read_text()


def trained_versions(project: Path) -> list[Path]:
    return sorted((project / "data" / "06_models" / "trained_model.safetensors").glob("*/*"))


def only_version(folder: Path) -> Path:
    """The one file of a versioned dataset `folder` (`<folder>/<version>/<name>`)."""
    (path,) = folder.glob(f"*/{folder.name}")
    return path


def training_run(project: Path) -> dict:
    return json.loads(
        only_version(project / "data" / "08_reporting" / "train" / "training_run.json").read_text()
    )
