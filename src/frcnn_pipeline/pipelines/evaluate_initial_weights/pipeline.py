"""The evaluate pipeline on `initial_weights`, in a folder of its own: Kedro loads pipelines by folder."""

from kedro.pipeline import Pipeline

from frcnn_pipeline.pipelines.evaluate.pipeline import create_pipeline as create_evaluate_pipeline


def create_pipeline(**kwargs) -> Pipeline:
    return create_evaluate_pipeline(weights="initial_weights")
