"""A small demo split and a detector trained on it for a few iterations (module-scoped: built once), for the
pipelines that run a trained model (evaluate, export)."""

from pathlib import Path

import model_configs
import pytest
import torch
from kedro.config import OmegaConfigLoader

from frcnn_pipeline.config import ModelParams
from frcnn_pipeline.data.coco import SplitSource, evaluation_ground_truth, read_coco_split
from frcnn_pipeline.data.dataset import DetectionDataset
from frcnn_pipeline.data.demo import DemoConfig, annotation_file, generate_demo_dataset, image_dir
from frcnn_pipeline.modeling import build_model
from frcnn_pipeline.modeling.saved import TRAINED_MODEL, SavedDetector, category_mapping
from frcnn_pipeline.settings import CONFIG_LOADER_ARGS

PROJECT = Path(__file__).resolve().parents[2]
# Small images keep a training step well under a second on two shared cores.
SMALL_INPUT = {"min_size_train": [64], "min_size_test": 64, "max_size": 96}


def project_config(kind: str) -> dict:
    """The project's conf/base `parameters` or `catalog` (as `kedro run` merges them)."""
    return OmegaConfigLoader(conf_source=str(PROJECT / "conf"), env="base", **CONFIG_LOADER_ARGS)[kind]


@pytest.fixture(scope="module")
def demo_split(module_tmp):
    root = module_tmp("demo") / "demo"
    generate_demo_dataset(root, DemoConfig(image_size=64, num_train_images=16, num_val_images=6))
    train = read_coco_split(SplitSource("train", annotation_file(root, "train"), image_dir(root, "train")))
    val = read_coco_split(
        SplitSource("val", annotation_file(root, "val"), image_dir(root, "val")), categories=train.categories
    )
    return {"train": train, "val": val, "ground_truth": evaluation_ground_truth(val), "root": root}


@pytest.fixture(scope="module")
def parameters() -> dict:
    return project_config("parameters")


@pytest.fixture(scope="module")
def catalog_config() -> dict:
    return project_config("catalog")


@pytest.fixture(scope="module")
def model_params(parameters) -> ModelParams:
    model = parameters["model"]
    return model_configs.model_params({**model, "input": {**model["input"], **SMALL_INPUT}})


@pytest.fixture(scope="module")
def trained_model(demo_split, model_params) -> SavedDetector:
    """A model after a few AdamW steps on the demo train split, with its config and classes."""
    torch.manual_seed(0)
    train = demo_split["train"]
    model = build_model(model_params, len(train.categories)).train()
    dataset = DetectionDataset(train.images, train.annotations, train=True)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    for step in range(4):
        images, targets = zip(*(dataset[(step * 2 + i) % len(dataset)] for i in range(2)), strict=True)
        loss = sum(model(list(images), list(targets)).values())
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    return SavedDetector(
        model.state_dict(),
        TRAINED_MODEL,
        model_config=model_params,
        categories=category_mapping(train.categories),
        provenance={"run_name": "conftest", "iterations": 4},
    )
