"""The ingest pipeline: locate (or generate) the data, validate both splits, report, describe the data."""

from kedro.pipeline import Node, Pipeline

from .nodes import (
    ingest_train_split,
    ingest_val_split,
    locate_dataset,
    plot_box_sizes,
    plot_class_balance,
    plot_image_sizes,
    plot_objects_per_image,
    report_validation,
    summarise_dataset,
    tabulate_dataset,
)


def create_pipeline(**kwargs) -> Pipeline:
    return Pipeline(
        [
            Node(locate_dataset, "params:ingest", "ingest_sources", name="locate_dataset"),
            Node(
                ingest_train_split,
                ["ingest_sources", "params:ingest"],
                ["train_images", "train_annotations", "categories", "train_findings"],
                name="validate_train_split",
            ),
            Node(
                ingest_val_split,
                ["ingest_sources", "categories", "params:ingest"],
                ["val_images", "val_annotations", "val_findings", "val_ground_truth"],
                name="validate_val_split",
            ),
            Node(
                report_validation,
                ["train_findings", "val_findings"],
                ["validation_report", "validation_summary"],
                name="report_validation",
            ),
            *dataset_statistics_nodes(),
        ],
        tags="ingest",
        # Groups the nodes as "ingest" in kedro-viz while keeping the shared catalogue names unprefixed.
        namespace="ingest",
        prefix_datasets_with_namespace=False,
    )


def dataset_statistics_nodes() -> list[Node]:
    """What each split looks like: class balance, objects per image, image and box sizes vs the anchors."""
    return [
        Node(
            tabulate_dataset,
            ["train_images", "train_annotations", "val_images", "val_annotations", "params:model"],
            ["dataset_images", "dataset_boxes"],
            name="tabulate_dataset",
        ),
        Node(
            summarise_dataset,
            ["dataset_images", "dataset_boxes", "categories", "params:model", "params:ingest.statistics"],
            ["dataset_statistics", "dataset_class_statistics", "dataset_box_statistics"],
            name="summarise_dataset",
        ),
        Node(
            plot_class_balance, "dataset_class_statistics", "dataset_class_balance", name="plot_class_balance"
        ),
        Node(
            plot_objects_per_image,
            "dataset_images",
            "dataset_objects_per_image",
            name="plot_objects_per_image",
        ),
        Node(plot_image_sizes, "dataset_images", "dataset_image_sizes", name="plot_image_sizes"),
        Node(plot_box_sizes, ["dataset_boxes", "params:model"], "dataset_box_sizes", name="plot_box_sizes"),
    ]
