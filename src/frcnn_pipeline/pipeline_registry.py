"""Project pipelines, built from an explicit `PipelineShape` (pipelines/shape.py).

Kedro calls `register_pipelines()` without arguments (for `kedro viz`, and for a session before its context
exists): it gets the default shape. A run's own shape is decided with its configuration
(frcnn_pipeline.framework.run_config), and the run-configuration hook rebuilds the registry's pipelines for it
with `build_pipeline`.
"""

import importlib
import pkgutil

from kedro.framework.project import find_pipelines
from kedro.pipeline import Pipeline

from frcnn_pipeline import pipelines as pipelines_package
from frcnn_pipeline.pipelines.shape import PipelineShape

# `kedro run` with no --pipeline: from COCO (or the demo) to a trained, evaluated model.
DEFAULT_PIPELINES = ("ingest", "weights", "train", "evaluate")
DEFAULT = "__default__"


def register_pipelines() -> dict[str, Pipeline]:
    """Every pipeline under its folder's name, in the default shape; the default chains ingest → weights →
    train → evaluate."""
    pipelines = find_pipelines(raise_errors=True)
    # Kedro 1.7 loads only the pipelines named on the command line; the default asks for all of them.
    if DEFAULT in pipelines:
        pipelines[DEFAULT] = _chain(pipelines)
    return pipelines


def pipeline_names() -> list[str]:
    """Every pipeline's name: the packages under pipelines/ (as `find_pipelines` finds them)."""
    return sorted(info.name for info in pkgutil.iter_modules(pipelines_package.__path__) if info.ispkg)


def build_pipeline(name: str, shape: PipelineShape) -> Pipeline:
    """The pipeline ``name`` (a folder under pipelines/, or ``__default__``) in ``shape``."""
    if name == DEFAULT:
        return _chain({step: build_pipeline(step, shape) for step in DEFAULT_PIPELINES})
    module = importlib.import_module(f"{pipelines_package.__name__}.{name}")
    return module.create_pipeline(shape)


def build_pipelines(shape: PipelineShape) -> dict[str, Pipeline]:
    """Every pipeline in ``shape``, with the default."""
    built = {name: build_pipeline(name, shape) for name in pipeline_names()}
    return {**built, DEFAULT: _chain(built)}


def _chain(pipelines: dict[str, Pipeline]) -> Pipeline:
    return sum((pipelines[name] for name in DEFAULT_PIPELINES), Pipeline([]))
