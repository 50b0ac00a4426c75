"""The clean COCO ground truth of a split as used, for pycocotools / faster-coco-eval and our evaluator."""

from __future__ import annotations

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
