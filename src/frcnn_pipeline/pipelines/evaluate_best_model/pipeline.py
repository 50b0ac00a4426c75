"""The evaluate pipeline on `best_model`, in a folder of its own: Kedro loads pipelines by folder."""

from kedro.pipeline import Pipeline

from frcnn_pipeline.pipelines.evaluate.pipeline import create_pipeline as create_evaluate_pipeline


def create_pipeline(**kwargs) -> Pipeline:
    return create_evaluate_pipeline(weights="best_model")
