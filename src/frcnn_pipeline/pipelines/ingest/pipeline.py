"""The ingest pipeline: locate (or generate) the data, validate the train split and each evaluation split."""

import functools
from functools import partial

from kedro.pipeline import Node, Pipeline

from frcnn_pipeline.pipelines.shape import DEFAULT_SHAPE, PipelineShape
from frcnn_pipeline.pipelines.splits import for_split

from .nodes import (
    ingest_evaluation_split,
    ingest_train_split,
    locate_dataset,
    plot_box_sizes,
    plot_class_balance,
    plot_image_sizes,
    plot_objects_per_image,
    report_validation,
    summarise_dataset,
    tabulate_dataset,
)


def create_pipeline(shape: PipelineShape = DEFAULT_SHAPE) -> Pipeline:
    """One validation node per split: `train` gives `train_*` and `categories`; each evaluation split `S`
    of ``shape`` (val, test, ...) gives `S_images`, `S_annotations`, `S_ground_truth` and
    `S_fingerprint`."""
    splits = shape.evaluation_splits
    return Pipeline(
        [
            Node(locate_dataset, "params:ingest", "ingest_sources", name="locate_dataset"),
            Node(
                ingest_train_split,
                ["ingest_sources", "params:ingest"],
                ["train_images", "train_annotations", "categories", "train_findings", "train_fingerprint"],
                name="validate_train_split",
            ),
            *(
                Node(
                    for_split(ingest_evaluation_split, split),
                    ["ingest_sources", "categories", "params:ingest"],
                    [
                        f"{split}_images",
                        f"{split}_annotations",
                        f"{split}_findings",
                        f"{split}_ground_truth",
                        f"{split}_fingerprint",
                    ],
                    name=f"validate_{split}_split",
                )
                for split in splits
            ),
            Node(
                functools.update_wrapper(
                    partial(report_validation, splits=("train", *splits)), report_validation
                ),
                [f"{split}_{table}" for split in ("train", *splits) for table in ("findings", "fingerprint")],
                ["validation_report", "validation_summary"],
                name="report_validation",
            ),
            *dataset_statistics_nodes(("train", *splits)),
        ],
        tags="ingest",
        # Groups the nodes as "ingest" in kedro-viz while keeping the shared catalogue names unprefixed.
        namespace="ingest",
        prefix_datasets_with_namespace=False,
    )


def dataset_statistics_nodes(splits: tuple[str, ...]) -> list[Node]:
    """What each split looks like: class balance, objects per image, image and box sizes vs the anchors."""
    tables = [name for split in splits for name in (f"{split}_images", f"{split}_annotations")]
    return [
        Node(
            functools.update_wrapper(partial(tabulate_dataset, splits=splits), tabulate_dataset),
            ["params:model", *tables],
            ["dataset_images", "dataset_boxes"],
            name="tabulate_dataset",
        ),
        Node(
            summarise_dataset,
            ["dataset_images", "dataset_boxes", "categories", "params:model", "params:ingest"],
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
