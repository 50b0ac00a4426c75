"""The train pipeline: one node; the workers are spawned inside it, so the catalog and hooks run once."""

from kedro.pipeline import Node, Pipeline

from .nodes import train_model


def create_pipeline(**kwargs) -> Pipeline:
    return Pipeline(
        [
            Node(
                train_model,
                [
                    "train_images",
                    "train_annotations",
                    "categories",
                    "initial_weights",
                    "val_images",
                    "val_ground_truth",
                    "params:model",
                    "params:train",
                    "params:runtime",
                    "params:evaluate",
                ],
                ["trained_model", "best_model", "training_metrics", "training_run", "training_curves"],
                name="train_detector",
            ),
        ],
        tags="train",
        namespace="train",
        prefix_datasets_with_namespace=False,
    )
