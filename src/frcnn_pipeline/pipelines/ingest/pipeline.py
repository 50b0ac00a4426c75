"""The ingest pipeline: locate (or generate) the data, validate the train split and each evaluation split."""

from kedro.pipeline import Node, Pipeline

from frcnn_pipeline.pipelines.splits import evaluation_splits, for_split

from .nodes import ingest_evaluation_split, ingest_train_split, locate_dataset, report_validation


def create_pipeline(**kwargs) -> Pipeline:
    """One validation node per split: `train` gives `train_*` and `categories`; each evaluation split `S`
    of `ingest.splits` (val, test, ...) gives `S_images`, `S_annotations` and `S_ground_truth`."""
    splits = evaluation_splits()
    return Pipeline(
        [
            Node(locate_dataset, "params:ingest", "ingest_sources", name="locate_dataset"),
            Node(
                ingest_train_split,
                ["ingest_sources", "params:ingest"],
                ["train_images", "train_annotations", "categories", "train_findings"],
                name="validate_train_split",
            ),
            *(
                Node(
                    for_split(ingest_evaluation_split, split),
                    ["ingest_sources", "categories", "params:ingest"],
                    [f"{split}_images", f"{split}_annotations", f"{split}_findings", f"{split}_ground_truth"],
                    name=f"validate_{split}_split",
                )
                for split in splits
            ),
            Node(
                report_validation,
                ["train_findings", *(f"{split}_findings" for split in splits)],
                ["validation_report", "validation_summary"],
                name="report_validation",
            ),
        ],
        tags="ingest",
        # Groups the nodes as "ingest" in kedro-viz while keeping the shared catalogue names unprefixed.
        namespace="ingest",
        prefix_datasets_with_namespace=False,
    )
