"""Project pipelines."""

from kedro.framework.project import find_pipelines
from kedro.pipeline import Pipeline

# `kedro run` with no --pipeline: from COCO (or the demo) to a trained, evaluated model.
DEFAULT_PIPELINES = ("ingest", "weights", "train", "evaluate")


def register_pipelines() -> dict[str, Pipeline]:
    """Every pipeline under its folder's name; the default chains ingest → weights → train → evaluate."""
    pipelines = find_pipelines(raise_errors=True)
    # Kedro 1.7 loads only the pipelines named on the command line; the default asks for all of them.
    if "__default__" in pipelines:
        pipelines["__default__"] = sum((pipelines[name] for name in DEFAULT_PIPELINES), Pipeline([]))
    return pipelines
