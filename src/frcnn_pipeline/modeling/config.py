"""The `model:` parameter section as the plain nested dict build_model reads.

The schema, its defaults (detectron2's Faster R-CNN R-50-FPN) and their meaning are in
frcnn_pipeline.config.model; any section given here may be partial.
"""

from collections.abc import Mapping
from typing import Any

from frcnn_pipeline.config.model import ModelParams


def default_model_config() -> dict[str, Any]:
    """detectron2's COCO Faster R-CNN R-50-FPN configuration, as a fresh nested dict."""
    return ModelParams().model_dump()


def resolve_model_config(model: ModelParams | Mapping[str, Any] | None) -> dict[str, Any]:
    """The `model:` section as build_model reads it: a validated section as it is; a saved model's config
    (possibly partial: an older version's) validated, with every key left out at its default.

    Raises:
        ParameterError (a ValueError): an unknown key or a wrong value, one line per problem.
    """
    section = model if isinstance(model, ModelParams) else ModelParams.parse(model, "model")
    return section.model_dump()
