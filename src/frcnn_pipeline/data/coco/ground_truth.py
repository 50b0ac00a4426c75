"""A split's ground truth for evaluation: as published (the official protocol) or as cleaned by ingest."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from frcnn_pipeline.data.coco.split import CocoSplit


def build_ground_truth(split: CocoSplit) -> dict[str, Any]:
    """A clean COCO dict of the split as used, for pycocotools/faster-coco-eval.

    Boxes are xywh as used (clipped where they ran past the border), category ids are the original ones, and
    annotation ids are renumbered 1..N when any is < 1 (pycocotools treats a matched gt id 0 as unmatched).
    Image ids are kept: detections refer to them.
    """
    annotations = split.annotations
    ann_ids = annotations["annotation_id"].to_numpy()
    if len(ann_ids) and ann_ids.min() < 1:
        ann_ids = np.arange(1, len(ann_ids) + 1)
    images = split.images
    return {
        "info": {"description": f"{split.name} ground truth as used", "source": str(split.annotation_file)},
        "images": [
            {"id": i, "file_name": f, "width": w, "height": h}
            for i, f, w, h in zip(
                images["image_id"].tolist(),
                images["file_name"].tolist(),
                images["width"].tolist(),
                images["height"].tolist(),
                strict=True,
            )
        ],
        "annotations": [
            {"id": a, "image_id": i, "category_id": c, "bbox": b, "area": ar, "iscrowd": int(cr)}
            for a, i, c, b, ar, cr in zip(
                ann_ids.tolist(),
                annotations["image_id"].tolist(),
                annotations["category_id"].tolist(),
                split.bbox_xywh.tolist(),
                annotations["area"].tolist(),
                annotations["iscrowd"].tolist(),
                strict=True,
            )
        ],
        "categories": [
            {"id": c, "name": n, "supercategory": s}
            for c, n, s in zip(
                split.categories["category_id"].tolist(),
                split.categories["name"].tolist(),
                split.categories["supercategory"].tolist(),
                strict=True,
            )
        ],
    }


_GROUND_TRUTH_FIELDS = ("id", "image_id", "category_id", "bbox", "area", "iscrowd")


def published_ground_truth(annotation_file: str | Path) -> tuple[dict[str, Any], int]:
    """The annotation file as pycocotools reads it, segmentations left out: every declared image, every box
    as written (past the border, degenerate, NaN), the declared categories. Official numbers need this.

    Returns the COCO dict and how many annotations had no `area` (pycocotools would fail on them; here they
    take their box's w*h, a deviation the caller records).
    """
    # Python's json, as pycocotools: it reads the NaN/Infinity literals that json.dump writes.
    with open(annotation_file, encoding="utf-8") as stream:
        document = json.load(stream)
    annotations, filled_areas = [], 0
    for record in document["annotations"]:
        kept = {key: record[key] for key in _GROUND_TRUTH_FIELDS if key in record}
        kept.setdefault("iscrowd", 0)
        if "area" not in kept:
            width, height = kept["bbox"][2:4]
            kept["area"] = width * height
            filled_areas += 1
        annotations.append(kept)
    images = [
        {key: image[key] for key in ("id", "file_name", "width", "height") if key in image}
        for image in document["images"]
    ]
    info = {"description": "as published", "source": str(annotation_file)}
    return {
        "info": info,
        "images": images,
        "annotations": annotations,
        "categories": document["categories"],
    }, (filled_areas)
