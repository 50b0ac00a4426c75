"""The embedded demo: a deterministic synthetic COCO dataset of simple shapes (Kedro-free).

Small JPEGs with circles, squares, triangles and stars of random size and colour on textured backgrounds, in
the COCO 2017 layout (``annotations/instances_{train,val}2017.json``, ``{train,val}2017/``). It is easy enough
for a Faster R-CNN to learn on a CPU in minutes. A manifest of the generation parameters next to the data lets
``ensure_demo_dataset`` regenerate only when they change.
"""

from __future__ import annotations

import json
import logging
import math
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageDraw

from frcnn_pipeline.config.ingest import DemoDatasetParams

logger = logging.getLogger(__name__)

# Bump when the drawing code changes, so existing demo folders are regenerated.
GENERATOR_VERSION = 1
MANIFEST = "manifest.json"
# COCO-like ids with a gap (no 4), so the id -> contiguous label mapping is exercised end to end.
CATEGORIES = ({"id": 1, "name": "circle"}, {"id": 2, "name": "square"}, {"id": 3, "name": "triangle"},
              {"id": 5, "name": "star"})  # fmt: skip
SPLITS = ("train", "val")


# The generator's settings: ``ingest.demo`` less its output_dir (defaults and checks in the schema).
DemoConfig = DemoDatasetParams


def annotation_file(root: Path, split: str) -> Path:
    return Path(root) / "annotations" / f"instances_{split}2017.json"


def image_dir(root: Path, split: str) -> Path:
    return Path(root) / f"{split}2017"


def _manifest(config: DemoConfig) -> dict[str, Any]:
    # The generator's settings only (`ingest.demo` also says where the demo goes).
    settings = config.model_dump(include=set(DemoDatasetParams.model_fields))
    return {"generator_version": GENERATOR_VERSION, "config": settings}


def ensure_demo_dataset(root: str | os.PathLike, config: DemoConfig) -> bool:
    """Generates the demo under ``root`` unless it is there with the same parameters; True if it generated."""
    root = Path(root)
    try:
        current = json.loads((root / MANIFEST).read_text())
    except (OSError, ValueError):
        current = None
    if current == _manifest(config) and all(annotation_file(root, s).is_file() for s in SPLITS):
        logger.info("Demo dataset up to date in %s", root)
        return False
    generate_demo_dataset(root, config)
    return True


def generate_demo_dataset(root: str | os.PathLike, config: DemoConfig) -> None:
    """Writes the demo into a temporary sibling folder, then swaps it in: a failed run leaves no half."""
    root = Path(root)
    root.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{root.name}.", dir=root.parent))
    try:
        next_image_id, next_annotation_id = 1, 1
        for split_index, split in enumerate(SPLITS):
            count = config.num_train_images if split == "train" else config.num_val_images
            rng = np.random.default_rng([config.seed, split_index])
            coco, next_image_id, next_annotation_id = _generate_split(
                staging,
                split,
                count,
                rng,
                config,
                first_image_id=next_image_id,
                first_annotation_id=next_annotation_id,
            )
            annotation_file(staging, split).parent.mkdir(parents=True, exist_ok=True)
            annotation_file(staging, split).write_text(json.dumps(coco))
        (staging / MANIFEST).write_text(json.dumps(_manifest(config), indent=2))
        if root.exists():
            retired = Path(tempfile.mkdtemp(prefix=f".{root.name}.old.", dir=root.parent))
            root.rename(retired / root.name)
            staging.rename(root)
            shutil.rmtree(retired)
        else:
            staging.rename(root)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    logger.info(
        "Generated the demo dataset in %s (%d train, %d val images)",
        root,
        config.num_train_images,
        config.num_val_images,
    )


def _generate_split(root, split, count, rng, config, *, first_image_id, first_annotation_id):
    folder = image_dir(root, split)
    folder.mkdir(parents=True)
    images, annotations = [], []
    annotation_id = first_annotation_id
    for image_id in range(first_image_id, first_image_id + count):
        file_name = f"{image_id:012d}.jpg"
        picture, objects = _draw_image(rng, config)
        picture.save(folder / file_name, quality=config.jpeg_quality)
        images.append(
            {"id": image_id, "file_name": file_name, "width": config.image_size, "height": config.image_size}
        )
        for category_id, polygon in objects:
            xs, ys = polygon[0::2], polygon[1::2]
            x, y = min(xs), min(ys)
            annotations.append(
                {
                    "id": annotation_id,
                    "image_id": image_id,
                    "category_id": category_id,
                    "bbox": [x, y, round(max(xs) - x, 2), round(max(ys) - y, 2)],
                    "area": round(_polygon_area(xs, ys), 2),
                    "iscrowd": 0,
                    "segmentation": [polygon],
                }
            )
            annotation_id += 1
    coco = {
        "info": {
            "description": f"frcnn_pipeline synthetic shapes demo, {split}",
            "version": str(GENERATOR_VERSION),
        },
        "images": images,
        "annotations": annotations,
        "categories": [{**c, "supercategory": "shape"} for c in CATEGORIES],
    }
    return coco, first_image_id + count, annotation_id


def _background(rng: np.random.Generator, config: DemoConfig) -> np.ndarray:
    """A muted colour gradient with faint stripes and pixel noise (float HxWx3)."""
    size = config.image_size
    yy, xx = np.mgrid[0:size, 0:size] / size
    base = rng.uniform(70, 190, 3)
    gradient = rng.uniform(-35, 35, (2, 3))
    frequency, phase = rng.uniform(2, 8, 2), rng.uniform(0, 2 * math.pi)
    stripes = 8 * np.sin(2 * math.pi * (frequency[0] * xx + frequency[1] * yy) + phase)
    return base + xx[..., None] * gradient[0] + yy[..., None] * gradient[1] + stripes[..., None]


def _draw_image(rng: np.random.Generator, config: DemoConfig):
    size = config.image_size
    pixels = _background(rng, config)
    background_colour = pixels.mean(axis=(0, 1))
    picture = Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8))
    draw = ImageDraw.Draw(picture)
    boxes: list[np.ndarray] = []
    for _ in range(rng.integers(config.min_objects, config.max_objects + 1)):
        for _attempt in range(50):
            side = rng.uniform(config.min_object_fraction, config.max_object_fraction) * size
            x, y = rng.uniform(0, size - side, 2)
            box = np.array([x, y, x + side, y + side])
            if all(_overlap(box, other) <= config.max_overlap for other in boxes):
                boxes.append(box)
                break
    # Largest first, so a smaller object is never hidden behind a bigger one.
    boxes.sort(key=lambda b: b[0] - b[2])
    objects = []
    for x, y, x2, _ in boxes:
        side = x2 - x
        category = CATEGORIES[rng.integers(len(CATEGORIES))]
        colour = _contrasting_colour(rng, background_colour, config.min_colour_contrast)
        polygon = _shape_polygon(category["name"], x, y, side, rng)
        if category["name"] == "circle":
            draw.ellipse([x, y, x + side, y + side], fill=colour)
        else:
            draw.polygon(list(zip(polygon[0::2], polygon[1::2], strict=True)), fill=colour)
        objects.append((category["id"], [round(v, 2) for v in polygon]))
    noisy = np.asarray(picture, dtype=np.float64) + rng.normal(0, config.noise_std, (size, size, 3))
    return Image.fromarray(np.clip(noisy, 0, 255).astype(np.uint8)), objects


def _contrasting_colour(rng, background, min_contrast) -> tuple[int, int, int]:
    for _ in range(100):
        colour = rng.integers(0, 256, 3)
        if np.linalg.norm(colour - background) >= min_contrast:
            break
    return tuple(int(c) for c in colour)


def _shape_polygon(name: str, x: float, y: float, side: float, rng: np.random.Generator) -> list[float]:
    """Flat [x1, y1, x2, y2, ...] polygon of the shape inscribed in the square (x, y, side)."""
    cx, cy, r = x + side / 2, y + side / 2, side / 2
    if name == "circle":
        angles = np.linspace(0, 2 * math.pi, 32, endpoint=False)
        xs, ys = cx + r * np.cos(angles), cy + r * np.sin(angles)
    elif name == "square":
        xs, ys = np.array([x, x + side, x + side, x]), np.array([y, y, y + side, y + side])
    elif name == "triangle":
        # Pointing up or down, so orientation does not give the class away on its own.
        if rng.random() < 0.5:
            xs, ys = np.array([x, x + side, cx]), np.array([y + side, y + side, y])
        else:
            xs, ys = np.array([x, x + side, cx]), np.array([y, y, y + side])
    else:  # five-pointed star, upright; scaled so that it fills its box
        angles = -math.pi / 2 + np.arange(10) * math.pi / 5
        radii = np.where(np.arange(10) % 2 == 0, 1.0, 0.45)
        xs, ys = np.cos(angles) * radii, np.sin(angles) * radii
        xs = x + (xs - xs.min()) / (xs.max() - xs.min()) * side
        ys = y + (ys - ys.min()) / (ys.max() - ys.min()) * side
    return np.stack([xs, ys], axis=1).ravel().tolist()


def _polygon_area(xs, ys) -> float:
    """Shoelace formula (the segmentation's area, as COCO's `area` field)."""
    xs, ys = np.asarray(xs), np.asarray(ys)
    return float(abs(np.dot(xs, np.roll(ys, 1)) - np.dot(ys, np.roll(xs, 1))) / 2)


def _overlap(a: np.ndarray, b: np.ndarray) -> float:
    """Intersection over the smaller box's area: unlike IoU, it also limits a small box inside a big one."""
    width = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    height = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    smaller = min((a[2] - a[0]) * (a[3] - a[1]), (b[2] - b[0]) * (b[3] - b[1]))
    return width * height / smaller
