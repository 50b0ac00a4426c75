"""Batched, distributed inference of the detector over a list of image files, gathered on rank 0.

Workers come from ``frcnn_pipeline.runtime.distributed.launch`` (as in training): each builds the model,
takes a contiguous share of the images, and rank 0 gathers every share. Images that cannot be decoded are
reported, not fatal. AMP (fp16 autocast) on NPU/GPU; on CPU bf16 autocast where the CPU has bf16
instructions (`cpu_precision`), and channels_last. `run_onnx_inference` runs an exported graph instead, in
ONNX Runtime, with the same records.
"""

from __future__ import annotations

import logging
from collections import OrderedDict
from typing import Any

import onnx
import pandas as pd
import torch
from PIL import Image
from torch import nn
from torch.utils.data import DataLoader, Dataset

from frcnn_pipeline.config import InferenceParams, ModelParams, RuntimeParams
from frcnn_pipeline.console.detail import DETAIL
from frcnn_pipeline.console.progress import Progress
from frcnn_pipeline.data.images import oriented_size, read_rgb
from frcnn_pipeline.errors import UserFacingError
from frcnn_pipeline.evaluation.cpu_precision import cpu_dtype
from frcnn_pipeline.export import OnnxDetector, read_description
from frcnn_pipeline.export.session import require_exported_from
from frcnn_pipeline.layers import backend as detection_ops
from frcnn_pipeline.modeling import StaticFasterRCNN, build_model
from frcnn_pipeline.modeling.backbone import fold_norms_into_convs
from frcnn_pipeline.modeling.saved import SavedDetector, category_mapping
from frcnn_pipeline.runtime import distributed
from frcnn_pipeline.runtime.devices import set_threads_per_worker
from frcnn_pipeline.runtime.distributed import WorkerContext
from frcnn_pipeline.runtime.world import WorldConfig

logger = logging.getLogger(__name__)


class ImageFiles(Dataset):
    """``(position, image uint8 RGB [3,H,W] or None, error message)`` per path: bad files do not raise."""

    def __init__(self, paths: list[str]):
        self.paths = list(paths)

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, position: int) -> tuple[int, torch.Tensor | None, str]:
        path = self.paths[position]
        try:
            return position, read_rgb(str(path)), ""
        except (RuntimeError, OSError, ValueError) as error:
            return position, None, f"{type(error).__name__}: {error}"


def _collate(batch: list) -> list:
    return batch


class _AutocastBackbone(nn.Module):
    """Runs the backbone + FPN (most of the compute) in reduced precision and hands fp32 features on.

    The heads stay fp32 on purpose: torchvision's box decoding casts proposals to the deltas' dtype, and bf16
    (8 mantissa bits) would move boxes of an 800-pixel image by several pixels.
    """

    def __init__(self, backbone: nn.Module, device_type: str, dtype: torch.dtype):
        super().__init__()
        self.body = backbone
        self.out_channels = backbone.out_channels
        self.device_type, self.dtype = device_type, dtype

    def forward(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        with torch.autocast(self.device_type, dtype=self.dtype):
            features = self.body(images)
        return OrderedDict((name, feature.float()) for name, feature in features.items())


def prepare_for_inference(model: nn.Module, device: torch.device, options: InferenceParams) -> nn.Module:
    """Eval mode on ``device``, with folded norms, channels_last and a bf16/fp16 backbone per ``options``."""
    model = model.eval().to(device)
    if options.fold_batch_norm:
        fold_norms_into_convs(model.backbone.body)
    if options.channels_last:
        model = model.to(memory_format=torch.channels_last)
    reduced = backbone_dtype(device.type, options)
    if reduced != torch.float32:
        model.backbone = _AutocastBackbone(model.backbone, device.type, reduced)
    return model


def backbone_dtype(device_type: str, options: InferenceParams) -> torch.dtype:
    """The backbone's dtype with ``options`` on this kind of device (the heads always run in float32)."""
    if device_type == "cpu":
        return cpu_dtype(options.cpu_precision)
    return torch.float16 if options.amp else torch.float32


def describe_arithmetic(runtime: RuntimeParams, options: InferenceParams) -> str:
    """What an inference run computes with, for its report: the model's own arithmetic, or the speed-ups."""
    if runtime.inference_backend == "onnxruntime":
        return "float32, the exported graph in ONNX Runtime"
    dtype = str(backbone_dtype(runtime.device, options)).removeprefix("torch.")
    changes = [f"backbone in {dtype}, heads in float32"] if dtype != "float32" else []
    changes += ["norms folded into the convs"] * options.fold_batch_norm
    changes += ["channels_last"] * options.channels_last
    if not changes:
        return "float32, the model's own arithmetic"
    return "; ".join(changes)


def aspect_grouped_order(paths: list[str]) -> list[int]:
    """Positions with the landscape images first, then the portrait ones (each in path order).

    A batch is padded to its largest height and width: a landscape and a portrait 640x480 image together
    pad to 640x640. Batches of one orientation, as training groups them, skip that work. Headers only.
    """

    def is_portrait(path: str) -> bool:
        try:
            with Image.open(path) as image:
                width, height = oriented_size(image)
        except (OSError, ValueError, SyntaxError):
            return False  # reported when the image itself is read
        return height > width

    portrait = [is_portrait(path) for path in paths]
    return sorted(range(len(paths)), key=portrait.__getitem__)


def inference_order(paths: list[str], options: InferenceParams) -> list[int]:
    """The order `predict_images` takes the images in: grouped by aspect ratio when the options say so."""
    return aspect_grouped_order(paths) if options.group_by_aspect else list(range(len(paths)))


def build_inference_model(
    state_dict: dict[str, torch.Tensor],
    model_cfg: ModelParams,
    num_classes: int,
    device: torch.device,
    options: InferenceParams,
) -> nn.Module:
    """A model with ``options``' test-time settings and ``state_dict``'s weights, ready on ``device``."""
    model = build_model(options.applied_to(model_cfg), num_classes)
    model.load_state_dict(state_dict)
    return prepare_for_inference(model, device, options)


def predict_images(
    model: nn.Module,
    paths: list[str],
    order: list[int],
    options: InferenceParams,
    context: WorkerContext,
    *,
    show_progress: bool = True,
) -> list[dict[str, Any]]:
    """This rank's contiguous share of ``paths`` taken in ``order`` (`inference_order`) through ``model``;
    every rank gets all records, in path order.

    A collective: every rank of the process group calls it (also from inside training, see evaluator.py).
    """
    device = context.device
    share = [order[i] for i in distributed.shard_indices(len(paths), context.rank, context.world_size)]
    loader = DataLoader(
        torch.utils.data.Subset(ImageFiles(paths), share),
        batch_size=options.batch_size,
        num_workers=options.num_workers,
        collate_fn=_collate,
    )
    results = []
    progress = Progress("inference", len(paths), "img", enabled=context.is_main and show_progress)
    with torch.inference_mode(), progress:
        for batch in loader:
            readable = [(position, image) for position, image, _ in batch if image is not None]
            outputs = []
            if readable:
                outputs = model(_device_batch(model, [image for _, image in readable], device))
            for (position, image), output in zip(readable, outputs, strict=True):
                results.append(
                    {
                        "position": position,
                        "height": image.shape[1],
                        "width": image.shape[2],
                        "boxes": output["boxes"].float().cpu(),
                        "scores": output["scores"].float().cpu(),
                        "labels": output["labels"].cpu(),
                        "error": "",
                    }
                )
            results += [{"position": p, "error": error} for p, image, error in batch if image is None]
            # Every rank advances by its batch times the world size: an estimate that keeps the ETA honest.
            progress.update(len(batch) * context.world_size)
    gathered = distributed.all_gather_object(results)
    return sorted((r for rank_results in gathered for r in rank_results), key=lambda r: r["position"])


def _device_batch(model: nn.Module, images: list[torch.Tensor], device: torch.device):
    # The static-shape mode resizes into its canvas on the host: the device then sees one shape (loop.py).
    if isinstance(model, StaticFasterRCNN):
        return model.transform.host_batch(images).to(device)
    return [image.to(device, non_blocking=True) for image in images]


def _inference_worker(  # noqa: PLR0917 (launch passes arguments by position)
    context: WorkerContext,
    state_dict: dict[str, torch.Tensor],
    model_cfg: ModelParams,
    num_classes: int,
    paths: list[str],
    options: InferenceParams,
    order: list[int],
    settings: RuntimeParams,
) -> list[dict[str, Any]]:
    # The threads as in training: a CPU's rounding follows its thread count (the two-node test relies on it).
    set_threads_per_worker(settings.num_threads, context.device, settings.nproc_per_node)
    detection_ops.configure(settings.detection_ops)
    model = build_inference_model(state_dict, model_cfg, num_classes, context.device, options)
    return predict_images(model, paths, order, options, context)


def run_inference(
    state_dict: dict[str, torch.Tensor],
    model_cfg: ModelParams,
    num_classes: int,
    paths: list[str],
    *,
    world: WorldConfig,
    runtime: RuntimeParams | None = None,
    options: InferenceParams | None = None,
) -> list[dict[str, Any]]:
    """Predict every image in ``paths`` on ``world``'s workers; one record per path, in order (on every node
    of a multi-node run).

    A record has ``position``, ``error`` ("" when the image was read) and, when read, ``height``, ``width``,
    ``boxes`` (xyxy, input pixels), ``scores`` and ``labels`` (1..K).
    ``world`` is the run's (its configuration decides it once); ``runtime`` the ``runtime:`` parameter
    section (threads, detection ops), as for training.
    """
    options = options or InferenceParams()
    runtime = runtime or RuntimeParams()
    logger.info(
        "Inference of %d image(s) on %d %s worker(s), batch %d per worker",
        len(paths),
        world.world_size,
        world.device,
        options.batch_size,
        extra=DETAIL,
    )
    paths = list(map(str, paths))
    records = distributed.launch(
        _inference_worker,
        world,
        state_dict,
        model_cfg,
        num_classes,
        paths,
        options,
        inference_order(paths, options),
        runtime,
    )
    _report_unreadable(records, paths)
    return records


def run_model_inference(
    saved: SavedDetector,
    model_cfg: ModelParams,
    num_classes: int,
    paths: list[str],
    *,
    world: WorldConfig,
    runtime: RuntimeParams,
    options: InferenceParams,
    graph: onnx.ModelProto | None = None,
) -> list[dict[str, Any]]:
    """`run_inference` on ``saved`` (on ``world``'s workers), or `run_onnx_inference` on ``graph`` (exported
    from ``saved``), as ``runtime.inference_backend`` says."""
    if runtime.inference_backend == "torch":
        return run_inference(
            saved.state_dict, model_cfg, num_classes, paths, world=world, runtime=runtime, options=options
        )
    if graph is None:
        raise ValueError(
            "runtime.inference_backend is onnxruntime but no exported graph was given: the pipeline was "
            "built for the torch backend (the project's hooks build it for the run's "
            "runtime.inference_backend)"
        )
    require_exported_from(read_description(graph), saved)
    return run_onnx_inference(graph, paths, runtime=runtime, options=options)


def run_onnx_inference(
    graph: onnx.ModelProto,
    paths: list[str],
    *,
    runtime: RuntimeParams | None = None,
    options: InferenceParams | None = None,
) -> list[dict[str, Any]]:
    """`run_inference`'s records from an exported graph (`frcnn_pipeline.export`) run by ONNX Runtime on CPU,
    one image at a time (`runtime.num_threads` threads; ONNX Runtime's default: every core).

    Raises:
        UserFacingError: a device other than the CPU, or test-time filtering (score and NMS thresholds,
            detections per image) other than the graph's, which has them built in.
    """
    options = options or InferenceParams()
    settings = runtime or RuntimeParams()
    if settings.device != "cpu":
        raise UserFacingError(
            "runtime.inference_backend onnxruntime runs on the CPU, but runtime.device is "
            f"{settings.device!r}: set runtime.device: cpu, or runtime.inference_backend: torch"
        )
    detector = OnnxDetector(graph, threads=settings.num_threads)
    require_test_time_options(detector.description, options)
    paths = list(map(str, paths))
    logger.info(
        "Inference of %d image(s) with ONNX Runtime (%s graph)", len(paths), detector.variant, extra=DETAIL
    )
    loader = DataLoader(ImageFiles(paths), batch_size=1, num_workers=options.num_workers, collate_fn=_collate)
    records = []
    with Progress("inference", len(paths), "img") as progress:
        for [(position, image, error)] in loader:
            progress.update()
            if image is None:
                records.append({"position": position, "error": error})
                continue
            output = detector(image)
            records.append(
                {
                    "position": position,
                    "height": image.shape[1],
                    "width": image.shape[2],
                    **output,
                    "error": "",
                }
            )
    _report_unreadable(records, paths)
    return records


def require_test_time_options(description: dict[str, Any], options: InferenceParams) -> None:
    """The graph's built-in test-time filtering must be what the options ask for."""
    built_in = description["postprocessing"]
    differ = [
        f"{key} is {getattr(options, key)} but the graph was exported with {built_in[key]}"
        for key in ("score_threshold", "nms_threshold", "detections_per_image")
        if getattr(options, key) != built_in[key]
    ]
    if differ:
        raise UserFacingError(
            f"The ONNX graph has its test-time filtering built in: {'; '.join(differ)}. Export again with "
            "export.score_threshold / nms_threshold / detections_per_image set alike "
            "(`kedro run --pipeline export --params ...`), or change the inference options to the graph's."
        )


def _report_unreadable(records: list[dict[str, Any]], paths: list[str]) -> None:
    failed = [r for r in records if r["error"]]
    if failed:
        logger.warning(
            "%d of %d image(s) could not be read and were skipped: %s",
            len(failed),
            len(paths),
            "; ".join(f"{paths[r['position']]} ({r['error']})" for r in failed[:5]),
        )


def coco_results(
    records: list[dict[str, Any]], image_ids: list[int], category_ids_by_label: list[int]
) -> list[dict[str, Any]]:
    """COCO results (image_id, category_id, bbox xywh, score) from inference records.

    ``category_ids_by_label[label - 1]`` is the original category id of model label ``label`` (1..K).
    """
    lookup = torch.as_tensor(category_ids_by_label, dtype=torch.int64)
    detections = []
    for record in records:
        if record["error"]:
            continue
        boxes = record["boxes"].double()
        xywh = torch.cat([boxes[:, :2], boxes[:, 2:] - boxes[:, :2]], dim=1).tolist()
        categories = lookup[record["labels"] - 1].tolist()
        image_id = int(image_ids[record["position"]])
        detections += [
            {"image_id": image_id, "category_id": int(c), "bbox": box, "score": float(s)}
            for box, c, s in zip(xywh, categories, record["scores"].tolist(), strict=True)
        ]
    return detections


def category_ids_by_label(categories: pd.DataFrame) -> list[int]:
    """Original category ids ordered by the contiguous ``label`` 0..K-1 of the categories table."""
    return [entry["category_id"] for entry in category_mapping(categories)]
