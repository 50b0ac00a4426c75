"""Project pipelines."""

from kedro.framework.project import find_pipelines
from kedro.pipeline import Pipeline

from frcnn_pipeline.pipelines import evaluate

# `kedro run` with no --pipeline: from COCO (or the demo) to a trained, evaluated model.
DEFAULT_PIPELINES = ("ingest", "weights", "train", "evaluate")


def register_pipelines() -> dict[str, Pipeline]:
    """Every pipeline under its folder's name; the default chains ingest → weights → train → evaluate.

    ``evaluate_initial_weights`` evaluates the weights pipeline's output instead of the trained model, e.g. a
    detectron2 model-zoo checkpoint.
    """
    pipelines = find_pipelines(raise_errors=True)
    pipelines["evaluate_initial_weights"] = evaluate.create_pipeline(weights="initial_weights")
    pipelines["__default__"] = sum((pipelines[name] for name in DEFAULT_PIPELINES), Pipeline([]))
    return pipelines
