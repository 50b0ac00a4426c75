"""Does an exported graph detect what the PyTorch model detects? Both on the same images with ground truth.

For each graph (`frcnn_pipeline.export`: dynamic, fixed) ONNX Runtime runs it and PyTorch runs the model it
was exported from, in float32, one image at a time (a batch would pad images to each other's size): the
dynamic graph against the model in its dynamic mode, the fixed-shape graph against the same model in its
static-shape mode on the same canvas (`export.onnx_export.graph_config`). The report gives the detections
matched between the two (same class, IoU >= 0.5, greedily by score) with their largest box and score
differences, what only one side found, and the COCO AP of both; an AP difference above the allowed one fails
the check.
"""

from __future__ import annotations

import logging
import time
from typing import Any

import onnx
import torch
from torchvision.ops import box_iou

from frcnn_pipeline.config import ExportCheckParams, InferenceParams, RuntimeParams
from frcnn_pipeline.errors import UserFacingError
from frcnn_pipeline.evaluation.coco_eval import evaluate_boxes
from frcnn_pipeline.evaluation.inference import coco_results, run_inference, run_onnx_inference
from frcnn_pipeline.export import DYNAMIC, FIXED, read_description
from frcnn_pipeline.export.onnx_export import graph_config
from frcnn_pipeline.modeling.saved import SavedDetector, require_categories

log = logging.getLogger(__name__)

MATCH_IOU = 0.5


class ExportCheckError(UserFacingError):
    """An exported graph's AP differs from PyTorch's by more than allowed; ``report`` holds the figures."""

    def __init__(self, message: str, report: dict[str, Any]) -> None:
        super().__init__(message)
        self.report = report


def compare_detections(
    reference: list[dict[str, Any]], candidate: list[dict[str, Any]]
) -> dict[str, float | int]:
    """Per image, each reference detection (best first) matched to the unmatched candidate detection of its
    class with the highest IoU, if >= MATCH_IOU. Box differences in input pixels (largest coordinate)."""
    matched, box_difference, score_difference = 0, 0.0, 0.0
    reference_only, candidate_only, unmatched_score = 0, 0, 0.0
    for ref, cand in zip(reference, candidate, strict=True):
        if ref["error"]:
            continue
        iou = box_iou(ref["boxes"].double(), cand["boxes"].double())
        iou[ref["labels"][:, None] != cand["labels"][None, :]] = -1.0
        taken = torch.zeros(len(cand["boxes"]), dtype=torch.bool)
        for row in torch.argsort(ref["scores"], descending=True, stable=True).tolist():
            overlaps = iou[row].masked_fill(taken, -1.0)
            if len(overlaps) and overlaps.max() >= MATCH_IOU:
                column = int(overlaps.argmax())
                taken[column] = True
                matched += 1
                box_difference = max(
                    box_difference, float((ref["boxes"][row] - cand["boxes"][column]).abs().max())
                )
                score_difference = max(
                    score_difference, float(abs(ref["scores"][row] - cand["scores"][column]))
                )
            else:
                reference_only += 1
                unmatched_score = max(unmatched_score, float(ref["scores"][row]))
        candidate_only += int((~taken).sum())
        if (~taken).any():
            unmatched_score = max(unmatched_score, float(cand["scores"][~taken].max()))
    return {
        "matched": matched,
        "max_box_difference_px": box_difference,
        "max_score_difference": score_difference,
        "pytorch_only": reference_only,
        "onnxruntime_only": candidate_only,
        "max_unmatched_score": unmatched_score,
    }


def subset_ground_truth(ground_truth: dict[str, Any], image_ids: list[int]) -> dict[str, Any]:
    """The ground truth of these images only."""
    keep = set(image_ids)
    return {
        **ground_truth,
        "images": [image for image in ground_truth["images"] if image["id"] in keep],
        "annotations": [a for a in ground_truth["annotations"] if a["image_id"] in keep],
    }


def check_export(
    graphs: dict[str, onnx.ModelProto],
    saved: SavedDetector,
    model_cfg: dict[str, Any],
    images: dict[str, list],
    ground_truth: dict[str, Any],
    *,
    runtime: dict[str, Any] | None,
    options: ExportCheckParams,
    split: str = "",
) -> dict[str, Any]:
    """The check report of each graph of ``graphs`` ({variant: graph}) exported from ``saved``.

    Args:
        model_cfg: the config the graphs were exported with (`modeling.saved.inference_model_config`).
        images: ``{"path": [...], "image_id": [...]}`` of the images checked, with their ``ground_truth``
            (whose category ids are those of ``saved``'s class mapping).

    Raises:
        ExportCheckError: a graph's AP differs from PyTorch's by more than ``options.max_ap_difference``.
    """
    categories = require_categories(saved)
    category_ids = [entry["category_id"] for entry in categories]
    ground_truth = subset_ground_truth(ground_truth, images["image_id"])
    report: dict[str, Any] = {
        "split": split,
        "images": len(images["path"]),
        "max_ap_difference": options.max_ap_difference,
        "source": None,
        "graphs": {},
    }
    # ONNX Runtime runs on the CPU, whatever device PyTorch uses.
    onnx_runtime = {"num_threads": RuntimeParams.parse(runtime, "runtime").num_threads}
    failures = []
    for variant, graph in graphs.items():
        description = read_description(graph)
        report["source"] = description["source"]
        built_in = description["postprocessing"]
        test_time = InferenceParams(
            batch_size=1,
            score_threshold=built_in["score_threshold"],
            nms_threshold=built_in["nms_threshold"],
            detections_per_image=built_in["detections_per_image"],
            cpu_precision="float32",
            amp=False,
            group_by_aspect=False,
        )
        canvas = description["preprocessing"]["outside_graph"]["canvas"] if variant == FIXED else None
        config = graph_config(model_cfg, variant, canvas)
        started = time.perf_counter()
        reference = run_inference(
            saved.state_dict, config, len(categories), images["path"], runtime=runtime, options=test_time
        )
        torch_seconds = time.perf_counter() - started
        started = time.perf_counter()
        candidate = run_onnx_inference(graph, images["path"], runtime=onnx_runtime, options=test_time)
        onnx_seconds = time.perf_counter() - started
        unreadable = [images["path"][r["position"]] for r in reference if r["error"]]
        if unreadable:
            raise UserFacingError(
                f"{len(unreadable)} image(s) of the export check could not be read, e.g. {unreadable[:3]}: "
                "fix the files or re-run the ingest pipeline (ingest.validation.image_checks: decode finds "
                "them)."
            )
        ap = {
            side: evaluate_boxes(
                ground_truth, coco_results(records, images["image_id"], category_ids)
            ).metrics()
            for side, records in (("pytorch", reference), ("onnxruntime", candidate))
        }
        difference = ap["onnxruntime"]["AP"] - ap["pytorch"]["AP"]
        passed = abs(difference) <= options.max_ap_difference
        report["graphs"][variant] = {
            "opset": description["opset"],
            "pytorch": ap["pytorch"],
            "onnxruntime": ap["onnxruntime"],
            "ap_difference": difference,
            "passed": passed,
            "detections": {
                "pytorch": sum(len(r["boxes"]) for r in reference),
                "onnxruntime": sum(len(r["boxes"]) for r in candidate),
                **compare_detections(reference, candidate),
            },
            "seconds": {"pytorch": torch_seconds, "onnxruntime": onnx_seconds},
        }
        log.info(
            "Export check, %s graph on %d images: AP PyTorch %.2f, ONNX Runtime %.2f (difference %+.3f "
            "points); matched detections differ by at most %.2g px and %.2g in score",
            variant, len(images["path"]), ap["pytorch"]["AP"] * 100, ap["onnxruntime"]["AP"] * 100,
            difference * 100, report["graphs"][variant]["detections"]["max_box_difference_px"],
            report["graphs"][variant]["detections"]["max_score_difference"],
        )  # fmt: skip
        if not passed:
            failures.append(
                f"the {variant} graph's AP is {ap['onnxruntime']['AP'] * 100:.2f} in ONNX Runtime and "
                f"{ap['pytorch']['AP'] * 100:.2f} in PyTorch ({difference * 100:+.2f} points)"
            )
    if {DYNAMIC, FIXED} <= report["graphs"].keys():
        # What the canvas and the static-shape mode change, in PyTorch itself: information, not a failure.
        report["fixed_vs_dynamic_pytorch_ap_difference"] = (
            report["graphs"][FIXED]["pytorch"]["AP"] - report["graphs"][DYNAMIC]["pytorch"]["AP"]
        )
    report["passed"] = not failures
    if failures:
        raise ExportCheckError(
            f"Export check failed on {len(images['path'])} images: {'; '.join(failures)}, more than the "
            f"{options.max_ap_difference * 100:g} points export.check.max_ap_difference allows. The graphs "
            "are not faithful to the model: see the report's largest box and score differences.",
            report,
        )
    return report
