"""Two nodes train like one (`kedro run` per node by hand, under torchrun, under a faked SLURM step), only
node 0 writes, and the evaluate pipeline finds the model they trained (multinode_runs.py says how they run).

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
import shutil
import sys
from pathlib import Path

import pandas as pd
import pytest
import torch
from multinode_runs import (
    CATEGORIES,
    finish,
    free_port,
    kedro_run,
    only_version,
    run_log,
    tiny_parameters,
    trained_versions,
    training_run,
    two_nodes,
)
from tiny_training import train_from_parameters

from frcnn_pipeline.config import SECTIONS
from frcnn_pipeline.datasets import DetectorDataset
from frcnn_pipeline.pipelines.evaluate.nodes import compute_coco_metrics, predict_split
from frcnn_pipeline.runtime.world import WorldConfig


def typed_sections(parameters: dict) -> dict:
    """Each section validated, as the run configuration hands them to the nodes."""
    return {name: SECTIONS[name].parse(value, name) for name, value in parameters.items() if name in SECTIONS}


@pytest.fixture(scope="module")
def reference(template, module_tmp) -> dict:
    """One worker × 2 images, in this process: the single-node run that the nodes must reproduce."""
    parameters = tiny_parameters(template)
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
    parameters, data = typed_sections(tiny_parameters(project)), project / "data"
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


def _files(folder: Path) -> dict[str, float]:
    return {
        str(p.relative_to(folder)): p.stat().st_mtime_ns for p in sorted(folder.rglob("*")) if p.is_file()
    }


def _written(before: dict[str, float], after: dict[str, float]) -> set[str]:
    return {path for path, mtime in after.items() if before.get(path) != mtime}


def _weights(version: Path) -> dict[str, torch.Tensor]:
    return DetectorDataset(filepath=str(version)).load().state_dict


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


def test_two_kedro_nodes_train_like_one_only_node_0_writes_and_evaluate_finds_the_model(project, reference):
    data = project / "data"
    before = _files(data)
    port = free_port()
    nodes = [kedro_run(project, "train", two_nodes(rank, port)) for rank in (0, 1)]
    node0, node1 = finish(*nodes)

    (version,) = trained_versions(project)
    written = _written(before, _files(data))
    tracked = {path for path in written if path.startswith(TRACKING)}
    assert tracked, "node 0 tracks the run in the project's MLflow store"
    datasets = [_dataset(path) for path in sorted(written - tracked)]
    assert sorted(datasets) == sorted(TRAIN_OUTPUTS), "node 0's outputs, once each"
    assert str(version.relative_to(data)) in written
    node1_saves = _saves(run_log(project, node1))
    assert all("MemoryDataset" in line for line in node1_saves) and node1_saves, "node 1 saves to memory"
    assert "stay in memory here" in node1 and "this process saves the outputs" in node0
    _assert_same_weights(_weights(version), reference["state_dict"])
    metrics = pd.read_csv(only_version(data / "08_reporting" / "train" / "training_metrics.csv"))
    assert metrics["iteration"].tolist() == [1, 2, 3]
    record = training_run(project)
    assert record["world"]["num_nodes"] == 2 and record["world"]["world_size"] == 2
    assert record["world"]["launcher"] == "none" and record["total_batch"] == 2
    assert "train: 3 it in" in node0, "rank 0's progress reaches node 0's console"
    assert "iter 3/3" in run_log(project, node0), "its loss/LR lines node 0's log"
    assert "(rank 1) initial_weights loaded" in run_log(project, node1), "and rank 1's records node 1's"

    # As a user would next, on one machine: the evaluated model is the one the nodes trained.
    before = _files(data)
    finish(kedro_run(project, "evaluate", env=ONE_THREAD))
    assert all(
        path.startswith(("07_model_output/", "08_reporting/", TRACKING))
        for path in _written(before, _files(data))
    )
    report = json.loads(
        only_version(data / "08_reporting" / "evaluate" / "val" / "coco_metrics.json").read_text()
    )
    assert report["model"]["version"] == version.parent.name
    detections, metrics = _evaluated_here(project, version)
    written = only_version(data / "07_model_output" / "evaluate" / "val" / "detections.json")
    assert json.loads(written.read_text()) == json.loads(json.dumps(detections))
    assert report["metrics"] == metrics


def test_torchrun_two_nodes_one_process_each(project, reference):
    port = free_port()
    nodes = [
        kedro_run(project, "train", launcher=[sys.executable, "-m", "torch.distributed.run", "--nnodes", "2",
                                           "--nproc-per-node", "1", "--node-rank", str(rank), "--master-addr",
                                           "127.0.0.1", "--master-port", str(port)])
        for rank in (0, 1)
    ]  # fmt: skip
    node0, node1 = finish(*nodes)
    (version,) = trained_versions(project)
    _assert_same_weights(_weights(version), reference["state_dict"])
    assert (
        "this process saves the outputs" in node0
        and "rank 1 of 2 (torchrun)" in node1
        and all("MemoryDataset" in line for line in _saves(run_log(project, node1)))
    )
    record = training_run(project)
    assert record["world"]["launcher"] == "torchrun" and record["world"]["num_nodes"] == 2


def test_slurm_step_two_nodes_and_node_1_writes_nothing_into_its_own_folder(project, reference, tmp_path):
    # Node 1 runs in a copy of the project: its data folder must come out untouched. (Checkpoints of a fresh
    # run need no shared storage; resuming does.)
    other = Path(shutil.copytree(project, tmp_path / "node1_project", symlinks=True))
    untouched = _files(other / "data")
    step = {"SLURM_JOB_ID": "4242", "SLURM_NNODES": "2", "SLURM_STEP_NUM_NODES": "2",
            "SLURM_STEP_TASKS_PER_NODE": "1(x2)", "SLURM_JOB_NODELIST": "127.0.0.[1-2]",
            "MASTER_PORT": str(free_port())}  # fmt: skip
    nodes = [kedro_run(folder, "train", env={**step, "SLURM_NODEID": str(rank), "SLURM_PROCID": str(rank)})
             for rank, folder in ((0, project), (1, other))]  # fmt: skip
    node0, node1 = finish(*nodes)
    assert _files(other / "data") == untouched
    (version,) = trained_versions(project)
    _assert_same_weights(_weights(version), reference["state_dict"])
    assert "this process saves the outputs" in node0 and "node 1 of 2 (slurm)" in node1
    world = training_run(project)["world"]
    assert (world["launcher"], world["master_addr"]) == ("slurm", "127.0.0.1")
