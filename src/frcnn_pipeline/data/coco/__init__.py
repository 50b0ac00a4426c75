"""COCO-format reading, validation, tables and clean ground truth (Kedro-free).

- ``json_file``: reading and typing the JSON (msgspec), with errors that name the file and the record;
- ``findings``: the checks' severities, the validation policy and the report;
- ``category_checks``, ``image_checks``, ``annotation_checks``: the checks of a split's categories, images
  (records and files) and annotations, each with its findings;
- ``split``: ``read_coco_split``, which runs those checks in order, and the tables;
- ``ground_truth``: a split's ground truth as published (the COCO protocol), or as cleaned by ingest, and
  the record of what an evaluation scores.
"""

from frcnn_pipeline.data.coco.findings import (
    DEFAULT_SEVERITY,
    IMAGE_CHECK_MODES,
    REPORT_COLUMNS,
    ValidationPolicy,
    empty_findings,
    resolve_severity,
    summarise_findings,
)
from frcnn_pipeline.data.coco.ground_truth import (
    build_ground_truth,
    evaluation_ground_truth,
    published_ground_truth,
)
from frcnn_pipeline.data.coco.json_file import CocoFormatError
from frcnn_pipeline.data.coco.split import CocoSplit, SplitSource, read_coco_split

__all__ = [
    "DEFAULT_SEVERITY",
    "IMAGE_CHECK_MODES",
    "REPORT_COLUMNS",
    "CocoFormatError",
    "CocoSplit",
    "SplitSource",
    "ValidationPolicy",
    "build_ground_truth",
    "empty_findings",
    "evaluation_ground_truth",
    "published_ground_truth",
    "read_coco_split",
    "resolve_severity",
    "summarise_findings",
]
