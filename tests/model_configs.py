"""Typed `model:` sections for tests from the partial dicts they state (other keys at their defaults)."""

from collections.abc import Mapping
from typing import Any

from frcnn_pipeline.config import ModelParams


def model_params(partial: Mapping[str, Any] | None = None) -> ModelParams:
    """``{"backbone": {"depth": 18}}`` as the `ModelParams` a run would validate it into."""
    return ModelParams.parse(partial, "model")
