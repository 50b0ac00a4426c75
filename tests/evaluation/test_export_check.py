"""The export check: matching PyTorch's and ONNX Runtime's detections, and a graph that translates its model
faithfully but loses AP against the model as evaluate runs it."""

import re

import pytest
import torch
from model_configs import model_params
from PIL import Image

from frcnn_pipeline.config import ExportCheckParams, InferenceParams, RuntimeParams
from frcnn_pipeline.evaluation.export_check import (
    ExportCheckError,
    check_export,
    compare_detections,
    subset_ground_truth,
)
from frcnn_pipeline.evaluation.inference import run_inference
from frcnn_pipeline.export import DYNAMIC, FIXED, export_detector
from frcnn_pipeline.framework.parameter_docs import load_parameters
from frcnn_pipeline.modeling import build_model
from frcnn_pipeline.modeling.saved import TRAINED_MODEL, SavedDetector
from frcnn_pipeline.runtime.world import WorldConfig


def record(boxes, scores, labels) -> dict:
    return {
        "error": "",
        "boxes": torch.tensor(boxes, dtype=torch.float32).reshape(-1, 4),
        "scores": torch.tensor(scores),
        "labels": torch.tensor(labels),
    }


def test_detections_match_by_class_and_overlap_and_the_largest_differences_are_reported():
    reference = [
        record([[0, 0, 10, 10], [20, 20, 40, 40], [50, 50, 60, 60]], [0.9, 0.8, 0.1], [1, 2, 1]),
        {"error": "unreadable"},
    ]
    candidate = [
        # the second box swapped ahead (its score rose past the first), the third missing, one extra
        record([[20, 20, 40, 40.5], [0.25, 0, 10, 10], [70, 70, 80, 80]], [0.95, 0.9, 0.07], [2, 1, 1]),
        {"error": "unreadable"},
    ]
    comparison = compare_detections(reference, candidate)
    assert comparison == {
        "matched": 2,
        "max_box_difference_px": 0.5,
        "max_score_difference": torch.tensor(0.95).item() - torch.tensor(0.8).item(),
        "pytorch_only": 1,
        "onnxruntime_only": 1,
        "max_unmatched_score": torch.tensor(0.1).item(),
    }


def test_the_same_box_with_another_class_does_not_match():
    comparison = compare_detections(
        [record([[0, 0, 10, 10]], [0.9], [1])], [record([[0, 0, 10, 10]], [0.9], [2])]
    )
    assert comparison["matched"] == 0 and comparison["pytorch_only"] == comparison["onnxruntime_only"] == 1


def test_the_ground_truth_of_the_checked_images_only():
    truth = {
        "images": [{"id": 1}, {"id": 2}],
        "annotations": [{"id": 1, "image_id": 1}, {"id": 2, "image_id": 2}],
        "categories": [{"id": 5}],
    }
    subset = subset_ground_truth(truth, [2])
    assert subset == {
        "images": [{"id": 2}],
        "annotations": [{"id": 2, "image_id": 2}],
        "categories": [{"id": 5}],
    }


CATEGORIES = [{"label": i, "category_id": 10 + i, "name": name} for i, name in enumerate(("cat", "dog"))]
# The demo model at a 64 px test size; the fixed-shape graph gets the 96 x 96 canvas that holds any image.
TINY_INPUT = {"min_size_test": 64, "max_size": 96}


@pytest.fixture(scope="module")
def padded_export(module_tmp):
    """A tiny random detector, its graphs (a 96 x 96 canvas around 64 x 64 images) and four such images."""
    model = load_parameters("base")["model"]
    config = model_params({**model, "input": {**model["input"], **TINY_INPUT}})
    torch.manual_seed(0)
    saved = SavedDetector(
        build_model(config, len(CATEGORIES)).state_dict(), TRAINED_MODEL, model_config=config,
        categories=CATEGORIES, origin={"version": "2025-05-01T00.00.00.000Z", "sha256": "ab" * 32},
    )  # fmt: skip
    folder = module_tmp("images")
    generator = torch.Generator().manual_seed(1)
    paths = []
    for image_id in range(4):
        pixels = torch.randint(0, 256, (64, 64, 3), dtype=torch.uint8, generator=generator)
        paths.append(str(folder / f"{image_id}.png"))
        Image.fromarray(pixels.numpy()).save(paths[-1])
    return saved, export_detector(saved, config), paths


def own_detections_as_ground_truth(records: list[dict], image_ids: list[int]) -> dict:
    """Each image's five best detections as its objects: the model at these settings scores (nearly) 100."""
    annotations = []
    for record, image_id in zip(records, image_ids, strict=True):
        for box, label in zip(record["boxes"][:5].tolist(), record["labels"][:5].tolist(), strict=True):
            x1, y1, x2, y2 = box
            annotations.append(
                {"id": len(annotations) + 1, "image_id": image_id, "iscrowd": 0,
                 "category_id": CATEGORIES[label - 1]["category_id"], "bbox": [x1, y1, x2 - x1, y2 - y1],
                 "area": (x2 - x1) * (y2 - y1)}
            )  # fmt: skip
    return {
        "images": [{"id": image_id, "width": 64, "height": 64} for image_id in image_ids],
        "annotations": annotations,
        "categories": [{"id": c["category_id"], "name": c["name"]} for c in CATEGORIES],
    }


def test_a_faithful_graph_whose_ap_drops_against_evaluates_settings_fails_naming_the_canvas_cost(
    padded_export,
):
    saved, exported, paths = padded_export
    evaluation = InferenceParams(batch_size=2, cpu_precision="float32")
    image_ids = list(range(len(paths)))
    evaluated = run_inference(
        saved.state_dict, saved.model_config, len(CATEGORIES), paths, world=WorldConfig(), options=evaluation
    )
    truth = own_detections_as_ground_truth(evaluated, image_ids)
    assert truth["annotations"]
    options = ExportCheckParams()
    with pytest.raises(ExportCheckError) as failed:
        check_export(
            {DYNAMIC: exported.dynamic, FIXED: exported.fixed}, saved, saved.model_config,
            {"path": paths, "image_id": image_ids}, truth, world=WorldConfig(), runtime=RuntimeParams(),
            options=options,
            evaluation=evaluation, split="val",
        )  # fmt: skip
    report = failed.value.report
    dynamic, fixed = report["graphs"][DYNAMIC], report["graphs"][FIXED]
    # Both graphs are faithful translations: ONNX Runtime finds what PyTorch finds in the same mode.
    assert abs(dynamic["ap_difference"]) <= options.max_ap_difference
    assert abs(fixed["ap_difference"]) <= options.max_ap_difference
    # The padded canvas costs AP in PyTorch itself, which only the comparison at evaluate's settings sees.
    assert dynamic["passed"] and not fixed["passed"] and not report["passed"]
    assert fixed["ap_difference_vs_evaluate"] < -options.max_ap_difference
    assert fixed["pytorch_mode_ap_difference"] == pytest.approx(fixed["ap_difference_vs_evaluate"], abs=1e-3)
    message = str(failed.value)
    assert "the dynamic graph" not in message
    assert re.search(
        r"the fixed graph's AP is [\d.]+ in ONNX Runtime and [\d.]+ for the PyTorch model at evaluate's "
        r"settings \(-[\d.]+ points\), -[\d.]+ of them in PyTorch itself: the cost of the 96x96 canvas, "
        r"padding the model never saw \(export.fixed_size: \[64, 64\] holds the checked images",
        message,
    ), message
