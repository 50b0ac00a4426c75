"""The export pipeline on `best_model`, in its own namespace and output folders (Kedro loads pipelines by
folder, hence this one); `evaluate_best_model` on onnxruntime runs the graph it writes."""

from kedro.pipeline import Pipeline

from frcnn_pipeline.pipelines.export.pipeline import create_pipeline as create_export_pipeline


def create_pipeline(**kwargs) -> Pipeline:
    """`best_model` as ONNX graphs: outputs `export_best_model.*`."""
    return create_export_pipeline(model="best_model")
