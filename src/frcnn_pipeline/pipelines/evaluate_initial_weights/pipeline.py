"""The evaluate pipeline on `initial_weights`, in its own namespace and output folders (Kedro loads
pipelines by folder, hence this one)."""

from kedro.pipeline import Pipeline

from frcnn_pipeline.pipelines.evaluate.pipeline import create_pipeline as create_evaluate_pipeline
from frcnn_pipeline.pipelines.shape import DEFAULT_SHAPE, PipelineShape


def create_pipeline(shape: PipelineShape = DEFAULT_SHAPE) -> Pipeline:
    """`initial_weights` on every evaluation split: outputs `evaluate_initial_weights.<split>.*`."""
    return create_evaluate_pipeline(shape, model="initial_weights", evaluation="evaluate_initial_weights")
