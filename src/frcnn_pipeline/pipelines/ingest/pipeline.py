"""The ingest pipeline: locate (or generate) the data, validate both splits, report."""

from kedro.pipeline import Node, Pipeline

from .nodes import ingest_train_split, ingest_val_split, locate_dataset, report_validation


def create_pipeline(**kwargs) -> Pipeline:
    return Pipeline(
        [
            Node(locate_dataset, "params:ingest", "ingest_sources", name="locate_dataset"),
            Node(
                ingest_train_split,
                ["ingest_sources", "params:ingest"],
                ["train_images", "train_annotations", "categories", "train_findings", "train_fingerprint"],
                name="validate_train_split",
            ),
            Node(
                ingest_val_split,
                ["ingest_sources", "categories", "params:ingest"],
                ["val_images", "val_annotations", "val_findings", "val_ground_truth", "val_fingerprint"],
                name="validate_val_split",
            ),
            Node(
                report_validation,
                ["train_findings", "val_findings", "train_fingerprint", "val_fingerprint"],
                ["validation_report", "validation_summary"],
                name="report_validation",
            ),
        ],
        tags="ingest",
        # Groups the nodes as "ingest" in kedro-viz while keeping the shared catalogue names unprefixed.
        namespace="ingest",
        prefix_datasets_with_namespace=False,
    )
