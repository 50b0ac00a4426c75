"""Predict nodes: the detector on user images; a results JSON and the images with their boxes drawn."""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

import onnx
from PIL import Image

from frcnn_pipeline.config import ModelParams, PredictParams, RuntimeParams
from frcnn_pipeline.data.images import read_rgb
from frcnn_pipeline.evaluation.drawing import draw_predictions
from frcnn_pipeline.evaluation.inference import run_model_inference
from frcnn_pipeline.modeling.saved import (
    SavedDetector,
    inference_model_config,
    require_categories,
    require_weights,
)
from frcnn_pipeline.runtime.world import WorldConfig

log = logging.getLogger(__name__)

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff")


def list_prediction_images(predict: PredictParams) -> list[str]:
    """``predict.images``: a folder (searched recursively for image files) or a list of image paths."""
    source = predict.images
    if not source:
        raise ValueError(
            "predict.images is not set: give a folder or a list of image paths, e.g. "
            "`kedro run --pipeline predict --params predict.images=/path/to/images`."
        )
    if isinstance(source, str | Path):
        folder = Path(source)
        if not folder.is_dir():
            raise FileNotFoundError(
                f"predict.images = {str(source)!r} is not a folder; give a folder of images or a list of "
                "image paths."
            )
        paths = sorted(
            str(p) for p in folder.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES
        )
        if not paths:
            raise FileNotFoundError(f"No image files ({', '.join(IMAGE_SUFFIXES)}) under {folder}.")
    else:
        # A listed path that does not exist is reported with the unreadable images, not fatal.
        paths = [str(p) for p in source]
    log.info("Predicting %d image(s)", len(paths))
    return paths


def predict_images(  # noqa: PLR0917 (a Kedro node: inputs by position)
    model: SavedDetector,
    image_paths: list[str],
    model_params: ModelParams,
    predict: PredictParams,
    runtime: RuntimeParams,
    world: WorldConfig,
    onnx_model: onnx.ModelProto | None = None,
) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """Inference records, one per path (``error`` set for images that could not be read), and the model
    used: its description (kind, version, sha256, provenance), class mapping and inference backend
    (``onnx_model``: the graph exported from ``model``, for onnxruntime). The inference runs on the run's
    ``world``."""
    require_weights(model)
    config, config_from = inference_model_config(model, model_params)
    categories = require_categories(model)
    records = run_model_inference(
        model,
        config,
        len(categories),
        image_paths,
        world=world,
        runtime=runtime,
        options=predict.inference,
        graph=onnx_model,
    )
    described = model.describe(config_from)
    return records, {**described, "inference_backend": runtime.inference_backend, "categories": categories}


def _by_label(prediction_model: dict[str, Any], key: str, background: Any) -> list[Any]:
    """``key`` of each class indexed by model label 1..K (index 0: background)."""
    return [background, *(entry[key] for entry in prediction_model["categories"])]


def build_prediction_results(
    records: list[dict[str, Any]],
    image_paths: list[str],
    prediction_model: dict[str, Any],
    predict: PredictParams,
) -> dict[str, Any]:
    """The results JSON: per image its boxes (xyxy and COCO xywh), category ids and names, scores;
    the images that could not be read, with the reason; the model that predicted them."""
    min_score = predict.score_threshold
    names = _by_label(prediction_model, "name", "__background__")
    category_ids = _by_label(prediction_model, "category_id", -1)
    images, unreadable = [], []
    for record in records:
        path = image_paths[record["position"]]
        if record["error"]:
            unreadable.append({"path": path, "error": record["error"]})
            continue
        keep = record["scores"] >= min_score
        detections = [
            {
                "category_id": category_ids[label],
                "category_name": names[label],
                "score": score,
                "bbox_xyxy": box,
                "bbox": [box[0], box[1], box[2] - box[0], box[3] - box[1]],
            }
            for box, label, score in zip(
                record["boxes"][keep].tolist(),
                record["labels"][keep].tolist(),
                record["scores"][keep].tolist(),
                strict=True,
            )
        ]
        images.append(
            {"path": path, "width": record["width"], "height": record["height"], "detections": detections}
        )
    if unreadable:
        log.warning(
            "%d image(s) could not be read and were skipped (listed under 'unreadable' in the results): %s",
            len(unreadable),
            "; ".join(f"{u['path']}: {u['error']}" for u in unreadable[:5]),
        )
    return {
        "score_threshold": min_score,
        "model": prediction_model,
        "images": images,
        "unreadable": unreadable,
    }


def _output_names(paths: list[str]) -> list[str]:
    """One partition name per image: its stem, made unique with its position where stems collide."""
    stems = [Path(p).stem for p in paths]
    return [stem if stems.count(stem) == 1 else f"{stem}_{i}" for i, stem in enumerate(stems)]


def draw_prediction_images(
    records: list[dict[str, Any]],
    image_paths: list[str],
    prediction_model: dict[str, Any],
    predict: PredictParams,
) -> dict[str, Callable[[], Image.Image]]:
    """The readable images with their boxes (score >= predict.score_threshold) drawn, saved lazily."""
    min_score = predict.score_threshold
    names = _by_label(prediction_model, "name", "__background__")
    output_names = _output_names(image_paths)

    def drawer(record: dict[str, Any]) -> Callable[[], Image.Image]:
        def draw() -> Image.Image:
            image = read_rgb(image_paths[record["position"]])
            keep = record["scores"] >= min_score
            labels = [
                f"{names[label]} {score:.2f}"
                for label, score in zip(
                    record["labels"][keep].tolist(), record["scores"][keep].tolist(), strict=True
                )
            ]
            return draw_predictions(image, record["boxes"][keep], labels)

        return draw

    return {output_names[r["position"]]: drawer(r) for r in records if not r["error"]}
