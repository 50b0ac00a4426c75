"""What a split looks like: class balance, objects per image, image sizes and crowd share (Kedro-free).

Works on the ingest tables (docs/architecture.md): ``images``, ``annotations`` and ``categories``. Crowd
annotations are counted apart: they are regions, not objects, and take no part in training or AP.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd

QUANTILES = {"min": 0.0, "p05": 0.05, "p25": 0.25, "median": 0.5, "p75": 0.75, "p95": 0.95, "max": 1.0}


def image_statistics(images: pd.DataFrame, annotations: pd.DataFrame) -> pd.DataFrame:
    """One row per image: ``image_id``, ``width``, ``height``, ``objects`` (non-crowd boxes) and
    ``crowd_boxes``."""
    crowd = annotations["iscrowd"].astype(bool)
    objects = annotations.loc[~crowd, "image_id"].value_counts()
    crowd_boxes = annotations.loc[crowd, "image_id"].value_counts()
    table = images[["image_id", "width", "height"]].copy()
    table["objects"] = table["image_id"].map(objects).fillna(0).astype(np.int64)
    table["crowd_boxes"] = table["image_id"].map(crowd_boxes).fillna(0).astype(np.int64)
    return table


def class_statistics(annotations: pd.DataFrame, categories: pd.DataFrame, num_images: int) -> pd.DataFrame:
    """One row per category: images showing it (and their share of the split's ``num_images``), its boxes
    (non-crowd) and their share of the split's boxes, and its crowd regions."""
    crowd = annotations["iscrowd"].astype(bool)
    objects = annotations[~crowd]
    table = categories[["label", "category_id", "name"]].sort_values("label").reset_index(drop=True)
    table["images"] = table["label"].map(objects.groupby("label")["image_id"].nunique()).fillna(0)
    table["boxes"] = table["label"].map(objects["label"].value_counts()).fillna(0)
    table["crowd_boxes"] = table["label"].map(annotations.loc[crowd, "label"].value_counts()).fillna(0)
    for column in ("images", "boxes", "crowd_boxes"):
        table[column] = table[column].astype(np.int64)
    table["image_share"] = table["images"] / max(num_images, 1)
    table["box_share"] = table["boxes"] / max(int(table["boxes"].sum()), 1)
    return table[
        ["label", "category_id", "name", "images", "image_share", "boxes", "box_share", "crowd_boxes"]
    ]


def quantiles(values: np.ndarray) -> dict[str, float]:
    """count and the QUANTILES of the finite values (NaN when there are none)."""
    finite = np.asarray(values, dtype=np.float64)
    finite = finite[np.isfinite(finite)]
    summary = {"count": int(finite.size)}
    for name, q in QUANTILES.items():
        summary[name] = float(np.quantile(finite, q)) if finite.size else float("nan")
    return summary


def split_summary(image_stats: pd.DataFrame) -> dict[str, Any]:
    """Counts, crowd share, objects per image and image sizes of one split (from ``image_statistics``)."""
    boxes, crowd = int(image_stats["objects"].sum()), int(image_stats["crowd_boxes"].sum())
    return {
        "images": len(image_stats),
        "boxes": boxes,
        "crowd_boxes": crowd,
        "crowd_share": crowd / (boxes + crowd) if boxes + crowd else 0.0,
        "images_without_objects": int((image_stats["objects"] == 0).sum()),
        "objects_per_image": {
            "mean": float(image_stats["objects"].mean()),
            **quantiles(image_stats["objects"]),
        },
        "image_width": quantiles(image_stats["width"]),
        "image_height": quantiles(image_stats["height"]),
    }
