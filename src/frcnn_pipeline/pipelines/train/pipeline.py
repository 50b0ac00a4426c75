"""The train pipeline: train (spawning the workers inside the node), then plot the curves."""

from kedro.pipeline import Node, Pipeline

from .nodes import plot_training_curves, train_model


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
                    "params:model",
                    "params:train",
                    "params:runtime",
                ],
                ["trained_model", "training_metrics", "training_run"],
                name="train_detector",
            ),
            Node(plot_training_curves, "training_metrics", "training_curves", name="plot_training_curves"),
        ],
        tags="train",
        namespace="train",
        prefix_datasets_with_namespace=False,
    )
