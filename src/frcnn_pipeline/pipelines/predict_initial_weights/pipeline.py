"""The predict pipeline on `initial_weights`, in its own namespace and output folders (Kedro loads pipelines
by folder, hence this one)."""

from kedro.pipeline import Pipeline

from frcnn_pipeline.pipelines.predict.pipeline import create_pipeline as create_predict_pipeline
from frcnn_pipeline.pipelines.shape import DEFAULT_SHAPE, PipelineShape


def create_pipeline(shape: PipelineShape = DEFAULT_SHAPE) -> Pipeline:
    """`initial_weights` on `predict.images`: outputs `predict_initial_weights.prediction_results` and
    `.prediction_images`."""
    return create_predict_pipeline(shape, model="initial_weights", namespace="predict_initial_weights")
