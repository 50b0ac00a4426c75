"""The export pipeline on `best_model`, in its own namespace and output folders (Kedro loads pipelines by
folder, hence this one); `evaluate_best_model` on onnxruntime runs the graph it writes."""

from kedro.pipeline import Pipeline

from frcnn_pipeline.pipelines.export.pipeline import create_pipeline as create_export_pipeline
from frcnn_pipeline.pipelines.shape import DEFAULT_SHAPE, PipelineShape


def create_pipeline(shape: PipelineShape = DEFAULT_SHAPE) -> Pipeline:
    """`best_model` as ONNX graphs: outputs `export_best_model.*`."""
    return create_export_pipeline(shape, model="best_model")
