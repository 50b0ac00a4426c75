"""The train pipeline: one node; the workers are spawned inside it, so the catalog and hooks run once."""

from kedro.pipeline import Node, Pipeline

from frcnn_pipeline.pipelines.run_inputs import RUN_RESUME, RUN_WORLD
from frcnn_pipeline.pipelines.shape import DEFAULT_SHAPE, PipelineShape
from frcnn_pipeline.pipelines.splits import for_split

from .nodes import train_model


def create_pipeline(shape: PipelineShape = DEFAULT_SHAPE) -> Pipeline:
    """Evaluation during training (`train.eval_period`) uses ``shape``'s first evaluation split."""
    split = shape.first_evaluation_split
    return Pipeline(
        [
            Node(
                for_split(train_model, split),
                [
                    "train_images",
                    "train_annotations",
                    "categories",
                    "initial_weights",
                    f"{split}_images",
                    f"{split}_ground_truth",
                    "params:model",
                    "params:train",
                    "params:runtime",
                    "params:evaluate",
                    RUN_WORLD,
                    RUN_RESUME,
                ],
                ["trained_model", "best_model", "training_metrics", "training_run", "training_curves"],
                name="train_detector",
                # Once every output is saved, the run record marks the checkpoint's outputs saved.
                confirms="training_run",
            ),
        ],
        tags="train",
        namespace="train",
        prefix_datasets_with_namespace=False,
    )
