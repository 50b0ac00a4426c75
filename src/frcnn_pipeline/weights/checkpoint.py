"""Read Caffe2/Detectron, detectron2 and torchvision checkpoint files safely and recognise their layout, and
the input conventions each layout implies."""

import zipfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from frcnn_pipeline.config.model import ModelParams
from frcnn_pipeline.errors import UserFacingError
from frcnn_pipeline.weights.safe_pickle import load_weights_pickle


class WeightsConversionError(UserFacingError, ValueError):
    """A checkpoint that cannot become this model's weights (unreadable, or backbone left unloaded).

    `report`, when the conversion got that far, is the per-key report, so that it can be saved anyway.
    """

    def __init__(self, message: str, report: pd.DataFrame | None = None) -> None:
        super().__init__(message)
        self.report = report


def load_checkpoint(path: str | Path) -> Any:
    """Read a weights file safely: `.pkl` with the restricted unpickler, `.safetensors` with safetensors,
    anything else (torch.save) with `torch.load(weights_only=True)`."""
    path = Path(path)
    suffix = path.suffix.lower()  # R-50.PKL is still a pickle
    if suffix == ".safetensors":
        from safetensors.numpy import load_file

        return load_file(str(path))
    if suffix == ".pkl" and not zipfile.is_zipfile(path):
        return load_weights_pickle(path)
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:
        raise WeightsConversionError(f"{path}: not a readable torch checkpoint ({error})") from error


def unwrap_checkpoint(checkpoint: Any, source_name: str) -> tuple[dict[str, Any], str]:
    """The flat name -> array mapping inside a checkpoint, and its detected format.

    Formats: "caffe2" (Detectron1 / MSRA `.pkl`, flat or {"blobs": ...}), "detectron2" ({"model": ...,
    "__author__": ...} or detectron2 names), "torchvision_detector", "torchvision_resnet".
    """
    if not isinstance(checkpoint, Mapping):
        raise WeightsConversionError(
            f"{source_name}: expected a mapping of weights, got {type(checkpoint).__name__}"
        )
    author = str(checkpoint.get("__author__", ""))
    state: Mapping[str, Any] = checkpoint
    for wrapper in ("model", "blobs", "state_dict"):
        if isinstance(checkpoint.get(wrapper), Mapping):
            state = checkpoint[wrapper]
            break
    state = {
        key.removeprefix("module."): value for key, value in state.items() if not key.endswith("_momentum")
    }
    for key, value in state.items():
        if not isinstance(value, np.ndarray | torch.Tensor):
            raise WeightsConversionError(
                f"{source_name}: unsupported value for {key!r} ({type(value).__name__}); "
                "weights must be arrays"
            )
    keys = set(state)
    if "conv1_w" in keys or any(key.startswith("res_conv1_bn") for key in keys):
        return state, "caffe2"
    if author or any(key.startswith(("backbone.bottom_up.", "stem.", "res2.")) for key in keys):
        return state, "detectron2/" + (author or "unknown")
    if any(key.startswith("backbone.body.") for key in keys):
        return state, "torchvision_detector"
    if "conv1.weight" in keys and any(key.startswith("layer1.") for key in keys):
        return state, "torchvision_resnet"
    raise WeightsConversionError(
        f"{source_name}: unrecognised checkpoint layout (first keys: {sorted(keys)[:5]}); supported are "
        "MSRA/Detectron .pkl, detectron2 checkpoints and torchvision ResNet / Faster R-CNN state dicts"
    )


def convention_warnings(source_format: str, model_cfg: ModelParams) -> list[str]:
    """Input and stride conventions of the weights that the model configuration contradicts.

    Shapes cannot tell them apart, so such weights load without complaint and quietly lose accuracy.
    """
    msra = source_format == "caffe2" or (
        source_format.startswith("detectron2/") and source_format != "detectron2/torchvision"
    )
    expected_format, expected_stride_in_1x1 = ("BGR", True) if msra else ("RGB", False)
    origin = "MSRA/detectron2" if msra else "torchvision"
    warnings = []
    if model_cfg.input.format != expected_format:
        warnings.append(
            f"{origin} weights expect {expected_format} input but model.input.format is "
            f"{model_cfg.input.format} (check pixel_mean/pixel_std too)"
        )
    bottleneck = model_cfg.backbone.depth >= 50
    if bottleneck and model_cfg.backbone.stride_in_1x1 != expected_stride_in_1x1:
        warnings.append(
            f"{origin} weights need model.backbone.stride_in_1x1: {str(expected_stride_in_1x1).lower()}"
        )
    return warnings
