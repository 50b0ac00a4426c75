"""The evaluate pipeline on `best_model`, in its own namespace and output folders (Kedro loads pipelines by
folder, hence this one)."""

from kedro.pipeline import Pipeline

from frcnn_pipeline.pipelines.evaluate.pipeline import create_pipeline as create_evaluate_pipeline
from frcnn_pipeline.pipelines.shape import DEFAULT_SHAPE, PipelineShape


def create_pipeline(shape: PipelineShape = DEFAULT_SHAPE) -> Pipeline:
    """`best_model` (train.best_metric) on every evaluation split: outputs `evaluate_best_model.<split>.*`."""
    return create_evaluate_pipeline(shape, model="best_model", evaluation="evaluate_best_model")
