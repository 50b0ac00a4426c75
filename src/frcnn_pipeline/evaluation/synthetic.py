"""Seeded COCO ground truth and detections for metric tests and benchmarks (no images needed)."""

from __future__ import annotations

from typing import Any

import numpy as np

# Box sides spread log-uniformly from tiny to large so every COCO area range (small < 32², medium < 96²,
# large) gets objects, as in real COCO.
MIN_SIDE, MAX_SIDE = 6.0, 420.0


def make_synthetic_coco(
    num_images: int,
    detections_per_image: int,
    *,
    num_categories: int = 8,
    objects_per_image: float = 7.0,
    crowd_fraction: float = 0.03,
    seed: int = 0,
    first_annotation_id: int = 1,
) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """Return ``(ground_truth, detections)``: a COCO dict and COCO results with realistic mistakes.

    Each ground-truth object gets a few jittered detections (some with a wrong category), the rest of an
    image's ``detections_per_image`` are background false positives; scores favour the good detections.
    """
    rng = np.random.default_rng(seed)
    category_ids = [int(c) for c in rng.choice(np.arange(1, 4 * num_categories + 1), num_categories, False)]
    categories = [{"id": c, "name": f"class_{c}", "supercategory": "thing"} for c in sorted(category_ids)]
    images, annotations, detections = [], [], []
    annotation_id = first_annotation_id
    for image_index in range(num_images):
        image_id = int(image_index * 3 + 1)  # sparse ids, as in COCO
        width, height = int(rng.integers(320, 1025)), int(rng.integers(240, 769))
        images.append({"id": image_id, "file_name": f"{image_id:012d}.jpg", "width": width, "height": height})
        num_objects = int(rng.poisson(objects_per_image))
        boxes = _random_boxes(rng, num_objects, width, height)
        labels = rng.choice(category_ids, num_objects)
        crowd = rng.random(num_objects) < crowd_fraction
        annotations += _annotations(rng, image_id, boxes, labels, crowd, first_id=annotation_id)
        annotation_id += num_objects
        image_detections = _image_detections(
            rng, boxes, labels, category_ids, (width, height), count=detections_per_image
        )
        detections += [
            {
                "image_id": image_id,
                "category_id": category_id,
                "bbox": [round(float(v), 2) for v in box],
                "score": round(score, 5),
            }
            for box, category_id, score in image_detections
        ]
    ground_truth = {"images": images, "annotations": annotations, "categories": categories}
    return ground_truth, detections


def _annotations(
    rng: np.random.Generator,
    image_id: int,
    boxes: np.ndarray,
    labels: np.ndarray,
    crowd: np.ndarray,
    *,
    first_id: int,
) -> list[dict[str, Any]]:
    return [
        {
            "id": first_id + index,
            "image_id": image_id,
            "category_id": int(category_id),
            "bbox": [float(v) for v in box],
            # A mask covers less than its box.
            "area": float(box[2] * box[3] * rng.uniform(0.5, 1.0)),
            "iscrowd": int(is_crowd),
        }
        for index, (box, category_id, is_crowd) in enumerate(zip(boxes, labels, crowd, strict=True))
    ]


def _image_detections(
    rng: np.random.Generator,
    boxes: np.ndarray,
    labels: np.ndarray,
    category_ids: list[int],
    size: tuple[int, int],
    *,
    count: int,
) -> list[tuple[np.ndarray, int, float]]:
    """``count`` (box, category id, score): jittered copies of the objects, then false positives."""
    image_detections = _detections_for_image(rng, boxes, labels, category_ids, size)[:count]
    missing = count - len(image_detections)
    background = _random_boxes(rng, missing, *size)
    return image_detections + [
        (box, int(c), float(s))
        for box, c, s in zip(
            background, rng.choice(category_ids, missing), rng.uniform(0.05, 0.6, missing), strict=True
        )
    ]


def _random_boxes(rng: np.random.Generator, count: int, width: int, height: int) -> np.ndarray:
    """``count`` xywh boxes inside a ``width`` x ``height`` image."""
    sides = np.exp(rng.uniform(np.log(MIN_SIDE), np.log(MAX_SIDE), (count, 1)))
    aspect = np.exp(rng.uniform(-0.7, 0.7, (count, 1)))
    w = np.minimum(sides * aspect, width - 1)
    h = np.minimum(sides / aspect, height - 1)
    x = rng.uniform(0, 1, (count, 1)) * (width - w)
    y = rng.uniform(0, 1, (count, 1)) * (height - h)
    return np.hstack([x, y, w, h])


def _detections_for_image(
    rng: np.random.Generator,
    boxes: np.ndarray,
    labels: np.ndarray,
    category_ids: list[int],
    size: tuple[int, int],
) -> list[tuple[np.ndarray, int, float]]:
    """Jittered copies of the ground-truth boxes: mostly the right class, sometimes a confusion."""
    width, height = size
    found = []
    for box, category_id in zip(boxes, labels, strict=True):
        for _ in range(int(rng.integers(0, 4))):
            jitter = rng.normal(0, 0.12, 4) * np.array([box[2], box[3], box[2], box[3]])
            x, y = max(box[0] + jitter[0], 0.0), max(box[1] + jitter[1], 0.0)
            w = min(max(box[2] + jitter[2], 1.0), width - x)
            h = min(max(box[3] + jitter[3], 1.0), height - y)
            confused = rng.random() < 0.15
            found_category = int(rng.choice(category_ids)) if confused else int(category_id)
            found.append((np.array([x, y, w, h]), found_category, float(rng.uniform(0.3, 1.0))))
    return found
