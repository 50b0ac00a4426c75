"""A split's ground truth for evaluation: as published (the official protocol) or as cleaned by ingest."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from frcnn_pipeline.data.coco.findings import UNUSABLE_IMAGE_CHECKS
from frcnn_pipeline.data.coco.json_file import fatal
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


_LISTED_IMAGES = 5


def evaluation_ground_truth(
    split: CocoSplit, ground_truth: str = "published", unusable_images: str = "error"
) -> dict[str, Any]:
    """The ground truth an evaluation split is scored against, its ``info.protocol`` recording what was
    scored and every departure from the annotation file as published.

    ``ground_truth``: "published" (the COCO protocol: pycocotools on the original JSON) or "cleaned" (as
    ingest validated it). ``unusable_images`` (published only): "error" stops on a declared image that
    cannot be run through the model; "missed" keeps it, with no detections, so its boxes count as missed.
    """
    unusable = split.findings[split.findings["check"].isin(UNUSABLE_IMAGE_CHECKS)]
    if ground_truth == "published" and unusable_images == "error" and len(unusable):
        shown = "; ".join(unusable["message"].head(_LISTED_IMAGES))
        more = f" (and {len(unusable) - _LISTED_IMAGES} more)" if len(unusable) > _LISTED_IMAGES else ""
        raise fatal(
            split.annotation_file,
            f"{len(unusable)} declared {split.name} image(s) cannot be evaluated: {shown}{more}",
            "restore those image files; or score them as missed with no detections "
            "(ingest.evaluation.unusable_images: missed), or evaluate on the cleaned split "
            "(ingest.evaluation.ground_truth: cleaned). Either is recorded in coco_metrics",
        )
    published, filled_areas = published_ground_truth(split.annotation_file)
    if ground_truth == "published":
        chosen = _without_foreign_categories(published, set(split.categories["category_id"].tolist()))
    else:
        chosen = build_ground_truth(split)
    protocol = {
        "ground_truth": ground_truth,
        "images_declared": len(published["images"]),
        "images_in_ground_truth": len(chosen["images"]),
        "images_inferred": len(split.images),
        "annotations_declared": len(published["annotations"]),
        "annotations_in_ground_truth": len(chosen["annotations"]),
        "images_scored_as_missed": (
            sorted(int(i) for i in unusable["image_id"]) if ground_truth == "published" else []
        ),
        "boxes_clipped": int((split.findings["check"] == "clipped_bbox").sum())
        if ground_truth == "cleaned"
        else 0,
        "areas_filled": filled_areas if ground_truth == "published" else 0,
    }
    protocol["deviations"] = _deviations(protocol)
    chosen["info"] = {**chosen["info"], "protocol": protocol}
    return chosen


def _without_foreign_categories(coco: dict[str, Any], classes: set[int]) -> dict[str, Any]:
    # A declared category that is no class of the model (dropped by ingest as unused in train) and has no box
    # in this split changes no number (COCOeval skips it); left in, it would be a blank row of the AP table.
    used = {a.get("category_id") for a in coco["annotations"]}
    kept = [c for c in coco["categories"] if c.get("id") in classes or c.get("id") in used]
    return {**coco, "categories": kept}


def _deviations(protocol: dict[str, Any]) -> list[str]:
    """Every departure from scoring the annotation file as published, in words (empty: the COCO protocol)."""
    deviations = []
    missed = protocol["images_scored_as_missed"]
    if missed:
        deviations.append(
            f"{len(missed)} image(s) could not be read and are scored with no detections (ids {missed[:10]})"
        )
    if protocol["areas_filled"]:
        deviations.append(f"{protocol['areas_filled']} annotation(s) without 'area' took their box's w*h")
    if protocol["ground_truth"] == "cleaned":
        deviations.append(
            "scored against the cleaned split, not the annotations as published: "
            f"{protocol['images_in_ground_truth']} of {protocol['images_declared']} images, "
            f"{protocol['annotations_in_ground_truth']} of {protocol['annotations_declared']} annotations, "
            f"{protocol['boxes_clipped']} boxes clipped to the image"
        )
    return deviations
