"""The MLflow UI on 127.0.0.1 over a tmp store, loaded in headless Chromium: it lists the runs, and nothing
leaves the machine (MLflow's telemetry is off, as settings.py sets it for `kedro mlflow ui`)."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml
from browser import BrowsedPage, browse, needs_chromium
from mlflow import MlflowClient

PROJECT = Path(__file__).resolve().parents[2]
SERVER_START_TIMEOUT_S = 240  # four cold imports of mlflow on two shared cores
RUN_NAMES = ("demo_lr1e-3", "demo_lr2e-3")


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture(scope="module")
def store(module_tmp) -> tuple[str, str]:
    """A SQLite store like the project's, with two runs that differ in their learning rate."""
    folder = module_tmp("mlflow-ui")
    uri = f"sqlite:///{folder}/mlflow.db"
    client = MlflowClient(uri)
    settings = yaml.safe_load((PROJECT / "conf" / "base" / "mlflow.yml").read_text())
    experiment = client.create_experiment(
        settings["tracking"]["experiment"]["name"],
        artifact_location=(folder / "artifacts").as_uri(),
        tags=settings["tracking"]["experiment"]["create_experiment_kwargs"]["tags"],
    )
    for name, lr in zip(RUN_NAMES, (1e-3, 2e-3), strict=True):
        run = client.create_run(experiment, run_name=name)
        client.log_param(run.info.run_id, "train.solver.base_lr", lr)
        for step in (20, 40):
            client.log_metric(run.info.run_id, "train/total_loss", 1.0 / step / lr, step=step)
        client.set_terminated(run.info.run_id)
    return uri, experiment


@pytest.fixture(scope="module")
def ui_url(store, module_tmp) -> Iterator[str]:
    uri, _ = store
    port = _free_port()
    mlflow = shutil.which("mlflow", path=str(Path(sys.executable).parent)) or "mlflow"
    log = (module_tmp("mlflow-ui-log") / "server.log").open("w")
    server = subprocess.Popen(
        [
            mlflow,
            "server",
            "--backend-store-uri",
            uri,
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--workers",
            "1",
        ],
        env={**os.environ, "MLFLOW_DISABLE_TELEMETRY": "true"},
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + SERVER_START_TIMEOUT_S
        while True:
            assert server.poll() is None, f"mlflow server exited: {Path(log.name).read_text()[-3000:]}"
            try:
                with urllib.request.urlopen(f"{url}/health", timeout=5) as response:
                    if response.status == 200:
                        break
            except OSError:
                pass
            assert time.monotonic() < deadline, (
                f"mlflow server did not answer: {Path(log.name).read_text()[-3000:]}"
            )
            time.sleep(2)
        yield url
    finally:
        server.terminate()  # uvicorn stops its worker on SIGTERM
        try:
            server.wait(timeout=30)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait()
        log.close()


@needs_chromium
def test_the_ui_lists_the_runs_and_nothing_leaves_the_machine(store, ui_url, tmp_path):
    _, experiment = store
    dom, net_log = browse(
        f"{ui_url}/#/experiments/{experiment}/runs",
        tmp_path / "chromium",
        window_size="1600,1000",
        virtual_time_budget_ms=20_000,
    )
    for name in RUN_NAMES:
        assert name in dom, f"the runs page does not list {name}:\n{dom[-3000:]}"
    BrowsedPage(dom, net_log, ui_url).assert_stayed_on_machine()
