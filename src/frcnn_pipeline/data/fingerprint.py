"""Content fingerprints (sha256) of a split's tables and of an evaluation ground truth.

They name the data a model was trained or measured on, so that a resumed training can tell re-ingested data
from the data it started on, and a metrics file says which ground truth it scored. Only the content counts:
image paths are left out (moving the dataset to another disk is not new data), and so is the ground truth's
`info` block (it names the annotation file's path).
"""

from __future__ import annotations

import hashlib
import json
from typing import Any

import numpy as np
import pandas as pd

_IMAGE_COLUMNS = {"image_id": np.int64, "width": np.int64, "height": np.int64}
_ANNOTATION_COLUMNS = {
    "annotation_id": np.int64,
    "image_id": np.int64,
    "category_id": np.int64,
    "label": np.int64,
    "x1": np.float64,
    "y1": np.float64,
    "x2": np.float64,
    "y2": np.float64,
    "iscrowd": np.bool_,
}


def _update_with_columns(digest: Any, table: pd.DataFrame, columns: dict[str, type], order: str) -> None:
    # Fixed dtypes and an explicit row order: the same content gives the same bytes whatever the pandas
    # version or the order the rows were read in (pandas' own hash_pandas_object promises neither).
    table = table.sort_values(order, kind="stable")
    digest.update(f"{len(table)} rows".encode())
    for name, dtype in columns.items():
        digest.update(name.encode())
        digest.update(np.ascontiguousarray(table[name].to_numpy(dtype=dtype)).tobytes())


def tables_fingerprint(images: pd.DataFrame, annotations: pd.DataFrame) -> str:
    """sha256 of a split's images (ids, file names, sizes) and annotations (ids, labels, boxes, crowd)."""
    digest = hashlib.sha256(b"frcnn_pipeline split tables v1\n")
    _update_with_columns(digest, images, _IMAGE_COLUMNS, "image_id")
    file_names = images.sort_values("image_id", kind="stable")["file_name"].astype(str)
    digest.update("\0".join(file_names).encode())
    _update_with_columns(digest, annotations, _ANNOTATION_COLUMNS, "annotation_id")
    return digest.hexdigest()


def ground_truth_fingerprint(ground_truth: dict[str, Any]) -> dict[str, Any]:
    """sha256 of a COCO ground truth's images, annotations and categories (canonical JSON), and counts."""
    content = {key: ground_truth.get(key, []) for key in ("images", "annotations", "categories")}
    canonical = json.dumps(content, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return {
        "sha256": hashlib.sha256(canonical.encode()).hexdigest(),
        "images": len(content["images"]),
        "annotations": len(content["annotations"]),
    }
