"""Several nodes on 127.0.0.1, as users start them: `kedro run` per node (by hand, under a faked SLURM step,
under torchrun), sharing one project folder as on a cluster's shared filesystem.

Every node trains the tiny detector with one gloo worker. The model samples every anchor and proposal and
freezes its norms (ALL_SAMPLES_MODEL), so a batch's loss is the mean of its images' losses: 2 nodes × 1 image
must give the weights of 1 worker × 2 images. The tolerance (rtol 1e-4, atol 1e-6) covers float32 summation
order (gloo's all-reduce of two per-rank means vs one mean over the batch), about 1e-7 relative per SGD step;
a batch that differs by one image moves the weights by more than 1e-3 (test_trainer shows it).

The trained weights are what is compared with the single-node run, not their AP: after 3 iterations every
detection scores 0.30-0.33, so which 100 boxes per image are kept, and in which order, follows float rounding;
weights changed by 1e-7 relative (one float32 step) move this AP by -8.5% to +1.9%. The evaluate pipeline
must give exactly what the trained weights give in this process, with the same number of threads.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pandas as pd
import pytest
import torch
import yaml
from model_configs import model_params
from tiny_training import ALL_SAMPLES_MODEL, train_from_parameters, write_tiny_dataset

from frcnn_pipeline.config import SECTIONS
from frcnn_pipeline.datasets import DetectorDataset
from frcnn_pipeline.engine.checkpoint import CheckpointManager, load_checkpoint
from frcnn_pipeline.framework.parameter_docs import load_parameters
from frcnn_pipeline.modeling import build_model
from frcnn_pipeline.modeling.saved import INITIAL_WEIGHTS, SavedDetector, category_mapping
from frcnn_pipeline.pipelines.evaluate.nodes import compute_coco_metrics, predict_split
from frcnn_pipeline.runtime.world import WorldConfig

PROJECT_ROOT = Path(__file__).resolve().parents[2]
# Guards against hangs; the runs themselves take seconds to a minute on two busy cores.
RUN_BOUND_S = 300
# The bound for a stop signal: checkpoint, message and exit within 30 s.
SIGNAL_EXIT_BOUND_S = 30
CATEGORIES = pd.DataFrame(
    {"label": [0, 1], "category_id": [1, 2], "name": ["red", "green"], "supercategory": ["box", "box"]}
)
TINY_ENV = {
    "model": ALL_SAMPLES_MODEL,
    "train": {
        "run_name": "tiny",
        "images_per_device": 1,
        "flip_prob": 0.5,
        "solver": {"optimizer": "sgd", "base_lr": 0.02, "reference_batch_size": None, "max_iter": 3,
                   "warmup_iters": 0, "steps": []},
        "checkpoint": {"period": 100},
        "log_period": 1,
    },
    "runtime": {"device": "cpu", "nproc_per_node": 1, "num_threads": 1, "num_workers": 0,
                "timeout_minutes": 1, "rendezvous_timeout_s": 120},
    "evaluate": {"inference": {"batch_size": 2, "channels_last": False}},
}  # fmt: skip


def _ground_truth(images: pd.DataFrame, annotations: pd.DataFrame) -> dict:
    return {
        "images": [{"id": int(r.image_id), "file_name": r.file_name, "width": 64, "height": 64}
                   for r in images.itertuples()],
        "annotations": [{"id": int(r.annotation_id), "image_id": int(r.image_id),
                         "category_id": int(r.category_id), "bbox": [r.x1, r.y1, r.x2 - r.x1, r.y2 - r.y1],
                         "area": r.area, "iscrowd": 0}
                        for r in annotations.itertuples()],
        "categories": [{"id": 1, "name": "red"}, {"id": 2, "name": "green"}],
    }  # fmt: skip


def _parameters(project: Path) -> dict:
    return load_parameters("tiny", conf_source=project / "conf")


def typed_sections(parameters: dict) -> dict:
    """Each section validated, as the run configuration hands them to the nodes."""
    return {name: SECTIONS[name].parse(value, name) for name, value in parameters.items() if name in SECTIONS}


@pytest.fixture(scope="module")
def template(module_tmp) -> Path:
    """A project copy with the tiny env and its ingest/weights outputs in place (copied again per test)."""
    project = module_tmp("template") / "project"
    ignore = shutil.ignore_patterns("__pycache__", "*.egg-info", "*.pyc")
    shutil.copytree(PROJECT_ROOT / "src", project / "src", ignore=ignore)
    shutil.copytree(PROJECT_ROOT / "conf", project / "conf", ignore=shutil.ignore_patterns("local"))
    (project / "conf" / "local").mkdir()
    # The project's logging leaves out Kedro's per-dataset lines; these tests read them to see where each node
    # saved (to a file, or to a MemoryDataset).
    logging_yml = project / "conf" / "logging.yml"
    quiet = "kedro.io:\n    level: WARNING"
    assert quiet in logging_yml.read_text()
    logging_yml.write_text(logging_yml.read_text().replace(quiet, "kedro.io:\n    level: INFO"))
    (project / "conf" / "tiny").mkdir()
    (project / "conf" / "tiny" / "parameters.yml").write_text(yaml.safe_dump(TINY_ENV))
    shutil.copy2(PROJECT_ROOT / "pyproject.toml", project)
    primary = project / "data" / "03_primary"
    primary.mkdir(parents=True)
    train_images, train_annotations = write_tiny_dataset(project / "images" / "train", count=8, seed=11)
    val_images, val_annotations = write_tiny_dataset(project / "images" / "val", count=4, seed=12)
    for name, table in {"train_images": train_images, "train_annotations": train_annotations,
                        "val_images": val_images, "val_annotations": val_annotations,
                        "categories": CATEGORIES}.items():  # fmt: skip
        table.to_parquet(primary / f"{name}.parquet", index=False)
    (primary / "val_ground_truth.json").write_text(json.dumps(_ground_truth(val_images, val_annotations)))
    torch.manual_seed(0)
    weights = build_model(model_params(_parameters(project)["model"]), len(CATEGORIES)).state_dict()
    DetectorDataset(filepath=str(project / "data" / "06_models" / "initial_weights.safetensors")).save(
        SavedDetector(weights, INITIAL_WEIGHTS, categories=category_mapping(CATEGORIES))
    )
    return project


@pytest.fixture
def project(template, tmp_path) -> Path:
    return Path(shutil.copytree(template, tmp_path / "project", symlinks=True))


@pytest.fixture(scope="module")
def reference(template, module_tmp) -> dict:
    """One worker × 2 images, in this process: the single-node run that the nodes must reproduce."""
    parameters = _parameters(template)
    data = template / "data"
    train = {**parameters["train"], "run_name": "reference", "images_per_device": 2}
    train["checkpoint"] = {**train["checkpoint"], "dir": str(module_tmp("reference"))}
    train["metrics_dir"] = train["checkpoint"]["dir"]
    weights = DetectorDataset(filepath=str(data / "06_models" / "initial_weights.safetensors")).load()
    images = pd.read_parquet(data / "03_primary" / "train_images.parquet")
    annotations = pd.read_parquet(data / "03_primary" / "train_annotations.parquet")
    result = train_from_parameters(
        images, annotations, 2, parameters["model"], train, parameters["runtime"], weights.state_dict
    )
    return {"state_dict": result["state_dict"]}


# Evaluation's float rounding depends on torch's number of threads: the evaluate pipeline and this process
# use one each.
ONE_THREAD = {"OMP_NUM_THREADS": "1"}


def _evaluated_here(project: Path, version: Path) -> tuple[list[dict], dict]:
    """The detections and metrics of the model at `version`, computed in this process on one thread."""
    parameters, data = typed_sections(_parameters(project)), project / "data"
    val_images = pd.read_parquet(data / "03_primary" / "val_images.parquet")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        detections, _ = predict_split(
            DetectorDataset(filepath=str(version)).load(), val_images, CATEGORIES, parameters["model"],
            parameters["evaluate"], parameters["runtime"], WorldConfig.from_runtime(parameters["runtime"]),
        )  # fmt: skip
    finally:
        torch.set_num_threads(threads)
    ground_truth = json.loads((data / "03_primary" / "val_ground_truth.json").read_text())
    return detections, compute_coco_metrics(ground_truth, detections, parameters["evaluate"]).metrics()


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _kedro(project: Path, pipeline: str, params: str = "", launcher: list[str] | None = None,
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


def _two_nodes(rank: int, port: int) -> str:
    return f"runtime.num_nodes=2,runtime.node_rank={rank},runtime.master_port={port}"


def _finish(*processes: subprocess.Popen) -> list[str]:
    outputs = [process.communicate(timeout=RUN_BOUND_S)[0] for process in processes]
    failed = [f"process {index}:\n{output[-5000:]}" for index, (process, output)
              in enumerate(zip(processes, outputs, strict=True)) if process.returncode != 0]  # fmt: skip
    assert not failed, "\n\n".join(failed)
    return outputs


def _files(folder: Path) -> dict[str, float]:
    return {
        str(p.relative_to(folder)): p.stat().st_mtime_ns for p in sorted(folder.rglob("*")) if p.is_file()
    }


def _written(before: dict[str, float], after: dict[str, float]) -> set[str]:
    return {path for path, mtime in after.items() if before.get(path) != mtime}


def _trained_versions(project: Path) -> list[Path]:
    return sorted((project / "data" / "06_models" / "trained_model.safetensors").glob("*/*"))


def _weights(version: Path) -> dict[str, torch.Tensor]:
    return DetectorDataset(filepath=str(version)).load().state_dict


def _only_version(folder: Path) -> Path:
    """The one file of a versioned dataset `folder` (`<folder>/<version>/<name>`)."""
    (path,) = folder.glob(f"*/{folder.name}")
    return path


def _assert_same_weights(state_dict: dict[str, torch.Tensor], reference: dict[str, torch.Tensor]) -> None:
    assert state_dict.keys() == reference.keys()
    for key, value in reference.items():
        torch.testing.assert_close(state_dict[key], value, rtol=1e-4, atol=1e-6, msg=key)


def _saves(output: str) -> list[str]:
    return [line for line in output.splitlines() if "Saving data to" in line]


# What training writes, versioned datasets by their folder (`<folder>/<version>/<name>`).
TRAIN_OUTPUTS = {"06_models/checkpoints/tiny/model_0000003.pth", "06_models/checkpoints/tiny/model_best.pth",
                 "06_models/checkpoints/tiny/outputs_saved.json",
                 "08_reporting/train_logs/tiny.jsonl",
                 "06_models/trained_model.safetensors", "06_models/best_model.safetensors",
                 "08_reporting/train/training_metrics.csv", "08_reporting/train/training_curves.png",
                 "08_reporting/train/training_run.json"}  # fmt: skip
TRACKING = "09_tracking/"  # the project's MLflow store


def _dataset(path: str) -> str:
    """A written file's dataset: the folder of a versioned one, else the file."""
    parts = path.split("/")
    return "/".join(parts[:-2]) if len(parts) > 2 and parts[-3] == parts[-1] else path


def _training_run(project: Path) -> dict:
    return json.loads(
        _only_version(project / "data" / "08_reporting" / "train" / "training_run.json").read_text()
    )


def test_two_kedro_nodes_train_like_one_only_node_0_writes_and_evaluate_finds_the_model(project, reference):
    data = project / "data"
    before = _files(data)
    port = _free_port()
    nodes = [_kedro(project, "train", _two_nodes(rank, port)) for rank in (0, 1)]
    node0, node1 = _finish(*nodes)

    (version,) = _trained_versions(project)
    written = _written(before, _files(data))
    tracked = {path for path in written if path.startswith(TRACKING)}
    assert tracked, "node 0 tracks the run in the project's MLflow store"
    datasets = [_dataset(path) for path in sorted(written - tracked)]
    assert sorted(datasets) == sorted(TRAIN_OUTPUTS), "node 0's outputs, once each"
    assert str(version.relative_to(data)) in written
    assert all("MemoryDataset" in line for line in _saves(node1)) and _saves(node1), "node 1 saves to memory"
    assert "stay in memory here" in node1 and "this process saves the outputs" in node0
    _assert_same_weights(_weights(version), reference["state_dict"])
    metrics = pd.read_csv(_only_version(data / "08_reporting" / "train" / "training_metrics.csv"))
    assert metrics["iteration"].tolist() == [1, 2, 3]
    record = _training_run(project)
    assert record["world"]["num_nodes"] == 2 and record["world"]["world_size"] == 2
    assert record["world"]["launcher"] == "none" and record["total_batch"] == 2
    assert "iter 3/3" in node0, "rank 0's loss/LR lines reach node 0's console"
    assert "(rank 1) initial_weights loaded" in node1, "and rank 1's records node 1's"

    # As a user would next, on one machine: the evaluated model is the one the nodes trained.
    before = _files(data)
    _finish(_kedro(project, "evaluate", env=ONE_THREAD))
    assert all(
        path.startswith(("07_model_output/", "08_reporting/", TRACKING))
        for path in _written(before, _files(data))
    )
    report = json.loads(
        _only_version(data / "08_reporting" / "evaluate" / "val" / "coco_metrics.json").read_text()
    )
    assert report["model"]["version"] == version.parent.name
    detections, metrics = _evaluated_here(project, version)
    written = _only_version(data / "07_model_output" / "evaluate" / "val" / "detections.json")
    assert json.loads(written.read_text()) == json.loads(json.dumps(detections))
    assert report["metrics"] == metrics


def test_torchrun_two_nodes_one_process_each(project, reference):
    port = _free_port()
    nodes = [
        _kedro(project, "train", launcher=[sys.executable, "-m", "torch.distributed.run", "--nnodes", "2",
                                           "--nproc-per-node", "1", "--node-rank", str(rank), "--master-addr",
                                           "127.0.0.1", "--master-port", str(port)])
        for rank in (0, 1)
    ]  # fmt: skip
    node0, node1 = _finish(*nodes)
    (version,) = _trained_versions(project)
    _assert_same_weights(_weights(version), reference["state_dict"])
    assert (
        "this process saves the outputs" in node0
        and "rank 1 of 2 (torchrun)" in node1
        and all("MemoryDataset" in line for line in _saves(node1))
    )
    record = _training_run(project)
    assert record["world"]["launcher"] == "torchrun" and record["world"]["num_nodes"] == 2


def test_slurm_step_two_nodes_and_node_1_writes_nothing_into_its_own_folder(project, reference, tmp_path):
    # Node 1 runs in a copy of the project: its data folder must come out untouched. (Checkpoints of a fresh
    # run need no shared storage; resuming does.)
    other = Path(shutil.copytree(project, tmp_path / "node1_project", symlinks=True))
    untouched = _files(other / "data")
    step = {"SLURM_JOB_ID": "4242", "SLURM_NNODES": "2", "SLURM_STEP_NUM_NODES": "2",
            "SLURM_STEP_TASKS_PER_NODE": "1(x2)", "SLURM_JOB_NODELIST": "127.0.0.[1-2]",
            "MASTER_PORT": str(_free_port())}  # fmt: skip
    nodes = [_kedro(folder, "train", env={**step, "SLURM_NODEID": str(rank), "SLURM_PROCID": str(rank)})
             for rank, folder in ((0, project), (1, other))]  # fmt: skip
    node0, node1 = _finish(*nodes)
    assert _files(other / "data") == untouched
    (version,) = _trained_versions(project)
    _assert_same_weights(_weights(version), reference["state_dict"])
    assert "this process saves the outputs" in node0 and "node 1 of 2 (slurm)" in node1
    world = _training_run(project)["world"]
    assert (world["launcher"], world["master_addr"]) == ("slurm", "127.0.0.1")


def _children(pid: int) -> list[int]:
    path = Path(f"/proc/{pid}/task/{pid}/children")
    return [int(child) for child in path.read_text().split()] if path.exists() else []


def _spawned_workers(pid: int) -> list[int]:
    """The training workers spawned by a Kedro process (not multiprocessing's resource tracker)."""
    workers = []
    for child in _children(pid):
        command = Path(f"/proc/{child}/cmdline").read_bytes().replace(b"\0", b" ")
        if b"spawn_main" in command and b"resource_tracker" not in command:
            workers.append(child)
    return workers


def _running(pid: int) -> bool:
    """Alive and not a zombie (a container's init may never reap orphans)."""
    stat = Path(f"/proc/{pid}/stat")
    return stat.exists() and stat.read_text().rsplit(")", 1)[1].split()[0] != "Z"


def _wait_until(condition, what: str, timeout: float = RUN_BOUND_S) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.2)


def _long_run(checkpoint_period: int) -> str:
    return f"train.solver.max_iter=100000,train.checkpoint.period={checkpoint_period}"


def test_a_killed_worker_stops_the_other_node_naming_it_and_keeps_the_last_checkpoint(project):
    checkpoints = CheckpointManager(project / "data" / "06_models" / "checkpoints" / "tiny")
    port = _free_port()
    nodes = [_kedro(project, "train", _two_nodes(rank, port) + "," + _long_run(checkpoint_period=2))
             for rank in (0, 1)]  # fmt: skip
    _wait_until(lambda: len(checkpoints.checkpoints()) >= 2, "two checkpoints")
    (worker,) = _spawned_workers(nodes[1].pid)
    os.kill(worker, signal.SIGKILL)
    outputs = [process.communicate(timeout=RUN_BOUND_S)[0] for process in nodes]

    assert all(process.returncode != 0 for process in nodes)
    named = "Rank 1 (node 1, "
    assert named in outputs[0] and "failed first: worker exited with signal SIGKILL" in outputs[0], outputs[
        0
    ][-4000:]
    assert named in outputs[1]
    last = checkpoints.latest()
    state = load_checkpoint(last)
    assert state["iteration"] == int(last.stem.split("_")[1]) >= 2
    assert not _trained_versions(project), "an unfinished run saves no model"


# SLURM's SIGTERM; Ctrl-C: to one node of two below, and to two workers in test_loader_workers.py.
def test_sigterm_to_kedro_saves_the_iteration_stops_the_workers_and_the_resubmitted_job_resumes(project):
    log = project / "data" / "08_reporting" / "train_logs" / "tiny.jsonl"
    run = _kedro(project, "train", "runtime.nproc_per_node=2," + _long_run(checkpoint_period=1000))
    _wait_until(lambda: log.is_file() and len(log.read_text().splitlines()) >= 2, "two iterations")
    workers = _spawned_workers(run.pid)
    assert len(workers) == 2
    os.kill(run.pid, signal.SIGTERM)
    output = run.communicate(timeout=RUN_BOUND_S)[0]

    assert run.returncode != 0
    message = next(line for line in output.splitlines() if "Training stopped by" in line)
    assert "Training stopped by SIGTERM after iteration" in message, output[-4000:]
    iteration = int(message.split("after iteration ")[1].split()[0])
    checkpoint = project / "data" / "06_models" / "checkpoints" / "tiny" / f"model_{iteration:07d}.pth"
    assert checkpoint.is_file() and load_checkpoint(checkpoint)["iteration"] == iteration
    assert not any(_running(pid) for pid in workers), "no worker is left training"
    assert "iter 1/100000" in output, "rank 0's periodic lines reach the console"
    # The resubmitted job continues from there, here on 1 worker × 2 images: the same total batch. (The
    # shorter schedule, to end the test soon, is a solver change that must be allowed.)
    resume = (
        f"train.images_per_device=2,train.solver.max_iter={iteration + 1},"
        "train.checkpoint.allow_solver_change=true"
    )
    (resumed,) = _finish(_kedro(project, "train", resume))
    record = _training_run(project)
    assert record["resumed_from_iteration"] == iteration and record["total_batch"] == 2, resumed[-3000:]
    assert [entry["change"] for entry in record["resume_changes"]] == [
        "world size 2 -> 1 with the same total batch 2: the schedule is unchanged; per-rank random "
        "streams are reseeded",
        f"solver.max_iter 100000 -> {iteration + 1}",
    ]


def test_ctrl_c_on_one_node_stops_both_after_the_same_iteration_with_its_checkpoint(project):
    """Ctrl-C in node 1's terminal: the stop travels with the losses, so node 0 (which writes the checkpoints)
    saves that iteration and both nodes end within the bound, naming why."""
    log = project / "data" / "08_reporting" / "train_logs" / "tiny.jsonl"
    port = _free_port()
    nodes = [_kedro(project, "train", _two_nodes(rank, port) + "," + _long_run(checkpoint_period=1000))
             for rank in (0, 1)]  # fmt: skip
    _wait_until(lambda: log.is_file() and len(log.read_text().splitlines()) >= 2, "two iterations")
    workers = [worker for node in nodes for worker in _spawned_workers(node.pid)]
    sent = time.monotonic()
    os.kill(nodes[1].pid, signal.SIGINT)
    outputs = [process.communicate(timeout=RUN_BOUND_S)[0] for process in nodes]
    took = time.monotonic() - sent

    assert all(process.returncode != 0 for process in nodes)
    assert took < SIGNAL_EXIT_BOUND_S, f"the nodes exited {took:.0f} s after Ctrl-C"
    stopped = [next(x for x in output.splitlines() if "Training stopped by" in x) for output in outputs]
    other_rank = "Training stopped by a stop signal on another rank after iteration"
    assert other_rank in stopped[0], outputs[0][-3000:]
    assert "Training stopped by SIGINT after iteration" in stopped[1], outputs[1][-3000:]
    iterations = {int(line.split("after iteration ")[1].split()[0]) for line in stopped}
    (iteration,) = iterations
    checkpoint = project / "data" / "06_models" / "checkpoints" / "tiny" / f"model_{iteration:07d}.pth"
    assert load_checkpoint(checkpoint)["iteration"] == iteration
    assert not any(_running(pid) for pid in workers), "no worker is left training"
    print(f"both nodes stopped {took:.1f} s after Ctrl-C on node 1, at iteration {iteration}")


class _Lines:
    """A process's output lines as they come, read by a thread: what came after a moment can be told apart."""

    def __init__(self, process: subprocess.Popen):
        self.lines: list[str] = []
        self._reader = threading.Thread(target=self._read, args=(process.stdout,), daemon=True)
        self._reader.start()

    def _read(self, stream) -> None:
        for line in stream:
            self.lines.append(line.rstrip("\n"))

    def join(self) -> list[str]:
        self._reader.join(RUN_BOUND_S)
        return self.lines


# A lost node's peers stop within seconds (a closed connection, or a heartbeat still for 5 s); the bound
# leaves room for a loaded machine.
LOST_NODE_BOUND_S = 60
# What a surviving node may print once the other is gone: the error, where the traceback is, Kedro's lines.
FAILURE_LINES = 15


@pytest.mark.parametrize("lost", [0, 1])
def test_a_lost_node_is_named_in_a_few_lines_on_the_other_which_stops_at_once(project, lost):
    log = project / "data" / "08_reporting" / "train_logs" / "tiny.jsonl"
    port = _free_port()
    nodes = [_kedro(project, "train", _two_nodes(rank, port) + "," + _long_run(checkpoint_period=1000))
             for rank in (0, 1)]  # fmt: skip
    outputs = [_Lines(process) for process in nodes]

    def trained_an_iteration() -> bool:
        if any(process.poll() is not None for process in nodes):
            pytest.fail(
                "a node stopped early:\n" + "\n".join(outputs[0].lines[-40:] + outputs[1].lines[-40:])
            )
        return log.is_file() and bool(log.read_text().strip())

    _wait_until(trained_an_iteration, "an iteration")
    survivor = 1 - lost
    before = len(outputs[survivor].lines)
    nodes[lost].kill()  # SIGKILL of that node's Kedro process (its workers die with it)
    killed = time.monotonic()
    nodes[survivor].wait(timeout=LOST_NODE_BOUND_S)
    took = time.monotonic() - killed
    nodes[lost].wait()
    failure = outputs[survivor].join()[before:]
    text = "\n".join(failure)

    assert nodes[survivor].returncode != 0, text
    assert len(failure) <= FAILURE_LINES, text
    error = next(line for line in failure if line.startswith("Error: "))
    assert f"Error: Node {lost} " in error and " was lost: " in error, text
    assert "start every node's command again" in error and "--pipeline train --env tiny" in error, text
    assert "Traceback" not in text
    log_name = next(line for line in failure if line.startswith("Full traceback: ")).split()[2]
    assert "Traceback (most recent call last)" in (project / log_name).read_text()
    print(f"node {survivor} stopped {took:.1f} s after node {lost} was killed, printing {len(failure)} lines")
