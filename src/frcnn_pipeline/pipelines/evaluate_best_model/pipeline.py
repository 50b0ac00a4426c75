"""The evaluate pipeline on `best_model`, in its own namespace and output folders (Kedro loads pipelines by
folder, hence this one)."""

from kedro.pipeline import Pipeline

from frcnn_pipeline.pipelines.evaluate.pipeline import create_pipeline as create_evaluate_pipeline


def create_pipeline(**kwargs) -> Pipeline:
    """`best_model` (train.best_metric) on every evaluation split: outputs `evaluate_best_model.<split>.*`."""
    return create_evaluate_pipeline(model="best_model", evaluation="evaluate_best_model")
