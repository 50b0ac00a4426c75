"""The multinode tests' project (test_multinode_training.py, test_multinode_stops.py): a copy of this
project with the tiny env and its ingest/weights outputs in place. It replaces the root conftest's `project`
in tests/engine, where no other test uses that one."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pandas as pd
import pytest
import torch
import yaml
from model_configs import model_params
from multinode_runs import CATEGORIES, tiny_parameters
from tiny_training import ALL_SAMPLES_MODEL, write_tiny_dataset

from frcnn_pipeline.datasets import DetectorDataset
from frcnn_pipeline.modeling import build_model
from frcnn_pipeline.modeling.saved import INITIAL_WEIGHTS, SavedDetector, category_mapping

PROJECT_ROOT = Path(__file__).resolve().parents[2]
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


@pytest.fixture(scope="module")
def template(module_tmp) -> Path:
    """A project copy with the tiny env and its ingest/weights outputs in place (copied again per test)."""
    project = module_tmp("template") / "project"
    ignore = shutil.ignore_patterns("__pycache__", "*.egg-info", "*.pyc")
    shutil.copytree(PROJECT_ROOT / "src", project / "src", ignore=ignore)
    shutil.copytree(PROJECT_ROOT / "conf", project / "conf", ignore=shutil.ignore_patterns("local"))
    (project / "conf" / "local").mkdir()
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
    weights = build_model(model_params(tiny_parameters(project)["model"]), len(CATEGORIES)).state_dict()
    DetectorDataset(filepath=str(project / "data" / "06_models" / "initial_weights.safetensors")).save(
        SavedDetector(weights, INITIAL_WEIGHTS, categories=category_mapping(CATEGORIES))
    )
    return project


@pytest.fixture
def project(template, tmp_path) -> Path:
    return Path(shutil.copytree(template, tmp_path / "project", symlinks=True))
