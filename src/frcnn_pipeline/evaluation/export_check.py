"""Does an exported graph detect what the PyTorch model detects? Both on the same images with ground truth.

For each graph (`frcnn_pipeline.export`: dynamic, fixed) ONNX Runtime runs it and PyTorch runs the model it
was exported from, in float32, one image at a time (a batch would pad images to each other's size): the
dynamic graph against the model in its dynamic mode, the fixed-shape graph against the same model in its
static-shape mode on the same canvas (`export.onnx_export.graph_config`). The report gives the detections
matched between the two (same class, IoU >= 0.5, greedily by score) with their largest box and score
differences, what only one side found, and the COCO AP of both.

That comparison proves the translation, not the graph: a loss of the graph's mode itself (the fixed-shape
graph's canvas pads the image, which a model that never saw padding pays for) is on both sides. So each
graph's AP is also compared with the PyTorch model's as `kedro run --pipeline evaluate` runs it
(`evaluate.inference`, with the graphs' built-in filtering). Either AP difference above the allowed one fails
the check, and the report says how much of it the graph's mode costs in PyTorch itself.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from typing import Any

import onnx
import torch
from torchvision.ops import box_iou

from frcnn_pipeline.config import ExportCheckParams, InferenceParams, ModelParams, RuntimeParams
from frcnn_pipeline.errors import UserFacingError
from frcnn_pipeline.evaluation.coco_eval import evaluate_boxes
from frcnn_pipeline.evaluation.inference import coco_results, run_inference, run_onnx_inference
from frcnn_pipeline.export import FIXED, read_description
from frcnn_pipeline.export.deployment import fitting_canvas
from frcnn_pipeline.export.onnx_export import graph_config
from frcnn_pipeline.modeling.saved import SavedDetector, require_categories
from frcnn_pipeline.runtime.world import WorldConfig

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
    model_cfg: ModelParams,
    images: dict[str, list],
    ground_truth: dict[str, Any],
    *,
    world: WorldConfig,
    runtime: RuntimeParams,
    options: ExportCheckParams,
    evaluation: InferenceParams | None = None,
    split: str = "",
) -> dict[str, Any]:
    """The check report of each graph of ``graphs`` ({variant: graph}) exported from ``saved``.

    Args:
        model_cfg: the config the graphs were exported with (`modeling.saved.inference_model_config`).
        images: ``{"path": [...], "image_id": [...]}`` of the images checked, with their ``ground_truth``
            (whose category ids are those of ``saved``'s class mapping).
        evaluation: evaluate's inference settings (`evaluate.inference`); the graphs' filtering replaces its.

    Raises:
        ExportCheckError: a graph's AP differs by more than ``options.max_ap_difference`` from PyTorch's in
            the graph's own mode, or from the PyTorch model's at evaluate's settings.
    """
    category_ids = [entry["category_id"] for entry in require_categories(saved)]
    ground_truth = subset_ground_truth(ground_truth, images["image_id"])
    checked = _CheckedImages(images["path"], images["image_id"], ground_truth, category_ids)
    descriptions = {variant: read_description(graph) for variant, graph in graphs.items()}
    at_evaluate, same_mode = _inference_settings(next(iter(descriptions.values())), evaluation)
    evaluated, at_evaluate_entry = _run_at_evaluate(saved, model_cfg, checked, world, runtime, at_evaluate)
    report: dict[str, Any] = {
        "split": split,
        "images": len(checked.paths),
        "max_ap_difference": options.max_ap_difference,
        "source": next(iter(descriptions.values()))["source"],
        "pytorch_at_evaluate": at_evaluate_entry,
        "graphs": {},
    }
    # ONNX Runtime runs on the CPU, whatever device PyTorch uses.
    onnx_threads = runtime.num_threads
    against = _GraphCheck(
        saved, model_cfg, checked, world, runtime, onnx_threads, same_mode,
        evaluate_ap=report["pytorch_at_evaluate"]["metrics"]["AP"],
        max_ap_difference=options.max_ap_difference,
        evaluated_sizes=[(r["height"], r["width"]) for r in evaluated],
    )  # fmt: skip
    failures = []
    for variant, graph in graphs.items():
        report["graphs"][variant], graph_failures = against.check(variant, graph, descriptions[variant])
        failures += graph_failures
    report["passed"] = not failures
    if failures:
        raise ExportCheckError(
            f"Export check failed on {len(checked.paths)} images: {'; '.join(failures)}. Allowed: "
            f"{options.max_ap_difference * 100:g} points (export.check.max_ap_difference; raise it to accept "
            "the difference).",
            report,
        )
    return report


@dataclass(frozen=True)
class _CheckedImages:
    """The images checked, their ground truth, and the category ids of the model's labels."""

    paths: list[str]
    image_ids: list[Any]
    ground_truth: dict[str, Any]
    category_ids: list[int]

    def metrics(self, records: list[dict[str, Any]]) -> dict[str, float]:
        """The COCO box metrics of a run's detections on these images."""
        results = coco_results(records, self.image_ids, self.category_ids)
        return evaluate_boxes(self.ground_truth, results).metrics()


def _run_at_evaluate(  # noqa: PLR0917 (the world and the runtime section beside the model and images)
    saved: SavedDetector,
    model_cfg: ModelParams,
    checked: _CheckedImages,
    world: WorldConfig,
    runtime: RuntimeParams,
    options: InferenceParams,
) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """The PyTorch model as evaluate runs it: its detections, and their entry of the report."""
    started = time.perf_counter()
    evaluated = run_inference(
        saved.state_dict,
        model_cfg,
        len(checked.category_ids),
        checked.paths,
        world=world,
        runtime=runtime,
        options=options,
    )
    _require_readable(evaluated, checked.paths)
    return evaluated, {
        "settings": options.model_dump(),
        "metrics": checked.metrics(evaluated),
        "seconds": time.perf_counter() - started,
    }


def _inference_settings(
    description: dict[str, Any], evaluation: InferenceParams | None
) -> tuple[InferenceParams, InferenceParams]:
    """Evaluate's settings and the graphs' own mode in PyTorch, both with the graphs' built-in filtering."""
    built_in = description["postprocessing"]
    filtering = {key: built_in[key] for key in ("score_threshold", "nms_threshold", "detections_per_image")}
    at_evaluate = (evaluation or InferenceParams()).model_copy(update=filtering)
    # The graph's own mode in PyTorch: float32, one image at a time (a batch would pad images to each other).
    same_mode = InferenceParams(
        batch_size=1, cpu_precision="float32", amp=False, group_by_aspect=False, **filtering
    )
    return at_evaluate, same_mode


@dataclass(frozen=True)
class _GraphCheck:
    """What each graph is checked against: the PyTorch model it was exported from, on the checked images in
    the graph's mode, and the model's AP at evaluate's settings."""

    saved: SavedDetector
    model_cfg: ModelParams
    checked: _CheckedImages
    world: WorldConfig
    runtime: RuntimeParams
    onnx_threads: int
    same_mode: InferenceParams
    evaluate_ap: float
    max_ap_difference: float
    evaluated_sizes: list[tuple[int, int]]  # (height, width) of the checked images

    def check(
        self, variant: str, graph: onnx.ModelProto, description: dict[str, Any]
    ) -> tuple[dict[str, Any], list[str]]:
        """The graph's entry of the report, and why it fails the check (empty if it passes)."""
        canvas = description["preprocessing"]["outside_graph"]["canvas"] if variant == FIXED else None
        reference, candidate, seconds = self._detect(graph, graph_config(self.model_cfg, variant, canvas))
        entry = self._report(description["opset"], reference, candidate, seconds)
        _log_graph_report(variant, len(self.checked.paths), entry, self.evaluate_ap)
        return entry, self._failures(variant, entry, canvas)

    def _detect(
        self, graph: onnx.ModelProto, config: dict[str, Any]
    ) -> tuple[list[dict[str, Any]], list[dict[str, Any]], dict[str, float]]:
        """The PyTorch model in the graph's mode (``config``) and the graph in ONNX Runtime, on the same
        images: their detections and seconds."""
        paths, options = self.checked.paths, self.same_mode
        started = time.perf_counter()
        reference = run_inference(
            self.saved.state_dict, config, len(self.checked.category_ids), paths,
            world=self.world, runtime=self.runtime, options=options,
        )  # fmt: skip
        torch_seconds = time.perf_counter() - started
        started = time.perf_counter()
        runtime = RuntimeParams(num_threads=self.onnx_threads)  # ONNX Runtime runs on the CPU
        candidate = run_onnx_inference(graph, paths, runtime=runtime, options=options)
        return reference, candidate, {"pytorch": torch_seconds, "onnxruntime": time.perf_counter() - started}

    def _report(
        self,
        opset: int,
        reference: list[dict[str, Any]],
        candidate: list[dict[str, Any]],
        seconds: dict[str, float],
    ) -> dict[str, Any]:
        ap = {"pytorch": self.checked.metrics(reference), "onnxruntime": self.checked.metrics(candidate)}
        difference = ap["onnxruntime"]["AP"] - ap["pytorch"]["AP"]
        versus_evaluate = ap["onnxruntime"]["AP"] - self.evaluate_ap
        allowed = self.max_ap_difference
        return {
            "opset": opset,
            "pytorch": ap["pytorch"],
            "onnxruntime": ap["onnxruntime"],
            "ap_difference": difference,
            "ap_difference_vs_evaluate": versus_evaluate,
            # What the graph's mode (the fixed-shape graph: canvas, static shapes) costs in PyTorch itself.
            "pytorch_mode_ap_difference": ap["pytorch"]["AP"] - self.evaluate_ap,
            "passed": abs(difference) <= allowed and abs(versus_evaluate) <= allowed,
            "detections": {
                "pytorch": sum(len(r["boxes"]) for r in reference),
                "onnxruntime": sum(len(r["boxes"]) for r in candidate),
                **compare_detections(reference, candidate),
            },
            "seconds": seconds,
        }

    def _failures(self, variant: str, entry: dict[str, Any], canvas: list[int] | None) -> list[str]:
        failures = []
        if abs(entry["ap_difference"]) > self.max_ap_difference:
            failures.append(
                f"the {variant} graph's AP is {entry['onnxruntime']['AP'] * 100:.2f} in ONNX Runtime and "
                f"{entry['pytorch']['AP'] * 100:.2f} in PyTorch in the same mode "
                f"({entry['ap_difference'] * 100:+.2f} points): the graph is not faithful to the model (see "
                "the report's largest box and score differences)"
            )
        if abs(entry["ap_difference_vs_evaluate"]) > self.max_ap_difference:
            fitting = fitting_canvas(self.model_cfg.input, self.evaluated_sizes)
            failures.append(_evaluate_failure(variant, entry, self.evaluate_ap, canvas, fitting))
        return failures


def _log_graph_report(variant: str, num_images: int, entry: dict[str, Any], evaluate_ap: float) -> None:
    log.info(
        "Export check, %s graph on %d images: AP ONNX Runtime %.2f, PyTorch in the graph's mode %.2f "
        "(%+.3f points), PyTorch at evaluate's settings %.2f (%+.3f points); matched detections differ "
        "by at most %.2g px and %.2g in score",
        variant, num_images, entry["onnxruntime"]["AP"] * 100, entry["pytorch"]["AP"] * 100,
        entry["ap_difference"] * 100, evaluate_ap * 100, entry["ap_difference_vs_evaluate"] * 100,
        entry["detections"]["max_box_difference_px"], entry["detections"]["max_score_difference"],
    )  # fmt: skip


def _evaluate_failure(
    variant: str, graph: dict[str, Any], evaluate_ap: float, canvas: list[int] | None, fitting: list[int]
) -> str:
    """How far a graph's AP is from evaluate's, and how much of that its mode costs in PyTorch itself (the
    fixed-shape graph: its canvas); ``fitting``: the canvas the checked images fill."""
    onnx_ap, mode_cost = graph["onnxruntime"]["AP"], graph["pytorch_mode_ap_difference"]
    message = (
        f"the {variant} graph's AP is {onnx_ap * 100:.2f} in ONNX Runtime and {evaluate_ap * 100:.2f} for "
        f"the PyTorch model at evaluate's settings ({graph['ap_difference_vs_evaluate'] * 100:+.2f} points), "
        f"{mode_cost * 100:+.2f} of them in PyTorch itself"
    )
    if canvas is None:
        return f"{message} (float32, one image per pass, against evaluate.inference's batch and precision)"
    message += f": the cost of the {canvas[0]}x{canvas[1]} canvas, padding the model never saw"
    if canvas != fitting:
        message += f" (export.fixed_size: {fitting} holds the checked images with the least padding)"
    return message


def _require_readable(records: list[dict[str, Any]], paths: list[str]) -> None:
    unreadable = [paths[r["position"]] for r in records if r["error"]]
    if unreadable:
        raise UserFacingError(
            f"{len(unreadable)} image(s) of the export check could not be read, e.g. {unreadable[:3]}: fix "
            "the files or re-run the ingest pipeline (ingest.validation.image_checks: decode finds them)."
        )
