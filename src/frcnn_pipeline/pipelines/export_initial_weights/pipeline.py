"""The export pipeline on `initial_weights`, in its own namespace and output folders (Kedro loads pipelines
by folder, hence this one)."""

from kedro.pipeline import Pipeline

from frcnn_pipeline.pipelines.export.pipeline import create_pipeline as create_export_pipeline


def create_pipeline(**kwargs) -> Pipeline:
    """`initial_weights` as ONNX graphs: outputs `export_initial_weights.*`."""
    return create_export_pipeline(model="initial_weights")
