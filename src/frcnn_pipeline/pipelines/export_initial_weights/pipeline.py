"""The export pipeline on `initial_weights`, in its own namespace and output folders (Kedro loads pipelines
by folder, hence this one)."""

from kedro.pipeline import Pipeline

from frcnn_pipeline.pipelines.export.pipeline import create_pipeline as create_export_pipeline
from frcnn_pipeline.pipelines.shape import DEFAULT_SHAPE, PipelineShape


def create_pipeline(shape: PipelineShape = DEFAULT_SHAPE) -> Pipeline:
    """`initial_weights` as ONNX graphs: outputs `export_initial_weights.*`."""
    return create_export_pipeline(shape, model="initial_weights")
