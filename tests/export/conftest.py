"""A tiny random detector (ResNet-18, 64-px test size) exported once for the module's tests."""

import pytest
import torch
from model_configs import model_params

from frcnn_pipeline.config import ModelParams
from frcnn_pipeline.export import export_detector
from frcnn_pipeline.framework.parameter_docs import load_parameters
from frcnn_pipeline.modeling import build_model
from frcnn_pipeline.modeling.saved import TRAINED_MODEL, SavedDetector

CATEGORIES = [
    {"label": i, "category_id": 10 + i, "name": name} for i, name in enumerate(("cat", "dog", "owl"))
]


def tiny_config(**input_overrides) -> ModelParams:
    """The demo model (conf/base) at a 64-px test size: a 96 x 96 canvas."""
    model = load_parameters("base")["model"]
    return model_params(
        {**model, "input": {**model["input"], "min_size_test": 64, "max_size": 96, **input_overrides}}
    )


def saved_detector(config: ModelParams) -> SavedDetector:
    torch.manual_seed(0)
    model = build_model(config, len(CATEGORIES))
    return SavedDetector(
        model.state_dict(),
        TRAINED_MODEL,
        model_config=config,
        categories=CATEGORIES,
        origin={"version": "2025-05-01T00.00.00.000Z", "sha256": "ab" * 32},
    )


@pytest.fixture(scope="module")
def tiny() -> SavedDetector:
    return saved_detector(tiny_config())


@pytest.fixture(scope="module")
def exported(tiny):
    return export_detector(tiny, tiny.model_config)
