"""Convert Caffe2/Detectron, detectron2 and torchvision checkpoints into this project's model state dict.

Names are translated by explicit rules (not detectron2's suffix matching), so every key is accounted for
in a report: mapped, missing, unused, shape_mismatch or expected_unused.
"""

import logging
import re
import zipfile
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from frcnn_pipeline.errors import UserFacingError
from frcnn_pipeline.weights.coco_rows import (
    LABEL_ROWS_KEY,
    PREDICTOR_KEYS,
    coco_label_rows,
    is_coco_predictor,
    label_rows_report_row,
    select_coco_rows,
)
from frcnn_pipeline.weights.safe_pickle import load_weights_pickle

logger = logging.getLogger(__name__)

BACKBONE_PREFIX = "backbone.body."
REPORT_COLUMNS = ["status", "source_key", "target_key", "source_shape", "target_shape", "note"]
# FrozenBatchNorm2d's eps: a folded MSRA scale s is stored with running_var = 1 - eps, so that
# s / sqrt(running_var + eps) == s and the layer is Detectron's AffineChannel exactly.
FROZEN_BN_EPS = 1e-5
# torchvision and detectron2 save BatchNorm2d's count of training batches; a frozen BN has no use for it.
FROZEN_BN_BATCH_COUNT = "ignored: a frozen BN (FrozenBatchNorm2d) keeps no count of training batches"


class WeightsConversionError(UserFacingError, ValueError):
    """A checkpoint that cannot become this model's weights (unreadable, or backbone left unloaded).

    `report`, when the conversion got that far, is the per-key report, so that it can be saved anyway.
    """

    def __init__(self, message: str, report: pd.DataFrame | None = None) -> None:
        super().__init__(message)
        self.report = report


@dataclass(frozen=True)
class Target:
    """Where a checkpoint key goes. `key` None: expected to be left out (`why` says why)."""

    key: str | None
    why: str = ""
    transform: str = ""  # "fold_bn" | "zero_bias" | "bg_first" | "bg_rows" | ""


# ---------------------------------------------------------------------------------------------- loading


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


# ---------------------------------------------------------------------------------------------- naming

_BN_SUFFIXES = {
    "s": "weight",
    "b": "bias",
    "gamma": "weight",
    "beta": "bias",
    "rm": "running_mean",
    "running_mean": "running_mean",
    "riv": "running_var",
    "running_var": "running_var",
}
_C2_BRANCHES = {
    "1": ("downsample.0", "downsample.1"),
    "2a": ("conv1", "bn1"),
    "2b": ("conv2", "bn2"),
    "2c": ("conv3", "bn3"),
}
_C2_BLOCK = re.compile(r"^res(\d)_(\d+)_branch(1|2a|2b|2c)_(w|b|bn_\w+)$")
_C2_STEM_BN = re.compile(r"^res_conv1_bn_(\w+)$")
_UNUSED_CLASSIFIER = Target(None, "ImageNet classifier, not part of a detector")
_UNUSED_STEM_BIAS = Target(None, "the stem conv has no bias (detectron2 ignores it too)")
_C2_FIXED = {
    "conv1_w": Target(BACKBONE_PREFIX + "conv1.weight"),
    "conv1_b": _UNUSED_STEM_BIAS,
    "fc1000_w": _UNUSED_CLASSIFIER,
    "fc1000_b": _UNUSED_CLASSIFIER,
}


def _norm_target(norm: str, kind: str) -> Target | None:
    suffix = _BN_SUFFIXES.get(kind)
    if suffix is None:
        return None
    return Target(f"{norm}.{suffix}", transform="fold_bn" if kind in {"s", "b"} else "")


def caffe2_target(name: str) -> Target | None:
    """MSRA/Detectron blob name -> model key (torchvision naming), following detectron2's renaming rules."""
    if name in _C2_FIXED:
        return _C2_FIXED[name]
    if match := _C2_STEM_BN.match(name):
        return _norm_target(BACKBONE_PREFIX + "bn1", match[1])
    match = _C2_BLOCK.match(name)
    if match is None:
        return None
    stage, block, branch, kind = match.groups()
    conv, norm = _C2_BRANCHES[branch]
    prefix = f"{BACKBONE_PREFIX}layer{int(stage) - 1}.{block}."
    if kind == "w":
        return Target(prefix + conv + ".weight")
    if kind == "b":
        return Target(None, "zero conv bias added by Detectron's add_missing_biases", "zero_bias")
    return _norm_target(prefix + norm, kind.removeprefix("bn_"))


# (pattern, template, transform); in templates {S} is the torchvision layer of detectron2's stage resS
# and {L} the FPN block index of level PL. Backbone rules see the name without "backbone.bottom_up.".
_D2_BACKBONE_RULES = [
    (r"^stem\.conv1\.norm\.(\w+)$", r"bn1.\1"),
    (r"^stem\.conv1\.weight$", "conv1.weight"),
    (r"^res(\d)\.(\d+)\.conv(\d)\.norm\.(\w+)$", r"layer{S}.\2.bn\3.\4"),
    (r"^res(\d)\.(\d+)\.conv(\d)\.weight$", r"layer{S}.\2.conv\3.weight"),
    (r"^res(\d)\.(\d+)\.shortcut\.norm\.(\w+)$", r"layer{S}.\2.downsample.1.\3"),
    (r"^res(\d)\.(\d+)\.shortcut\.weight$", r"layer{S}.\2.downsample.0.weight"),
]
_D2_HEAD_RULES = [
    (r"^backbone\.fpn_lateral(\d)\.(weight|bias)$", r"backbone.fpn.inner_blocks.{L}.0.\2", ""),
    (r"^backbone\.fpn_output(\d)\.(weight|bias)$", r"backbone.fpn.layer_blocks.{L}.0.\2", ""),
    (r"^proposal_generator\.rpn_head\.conv\.(weight|bias)$", r"rpn.head.conv.0.0.\1", ""),
    (r"^proposal_generator\.rpn_head\.objectness_logits\.(weight|bias)$", r"rpn.head.cls_logits.\1", ""),
    (r"^proposal_generator\.rpn_head\.anchor_deltas\.(weight|bias)$", r"rpn.head.bbox_pred.\1", ""),
    (r"^roi_heads\.box_head\.fc1\.(weight|bias)$", r"roi_heads.box_head.fc6.\1", ""),
    (r"^roi_heads\.box_head\.fc2\.(weight|bias)$", r"roi_heads.box_head.fc7.\1", ""),
    (
        r"^roi_heads\.box_predictor\.cls_score\.(weight|bias)$",
        r"roi_heads.box_predictor.cls_score.\1",
        "bg_first",
    ),
    (
        r"^roi_heads\.box_predictor\.bbox_pred\.(weight|bias)$",
        r"roi_heads.box_predictor.bbox_pred.\1",
        "bg_rows",
    ),
]
_D2_FIXED = {
    "fc1000.weight": _UNUSED_CLASSIFIER,
    "fc1000.bias": _UNUSED_CLASSIFIER,
    "linear.weight": _UNUSED_CLASSIFIER,
    "linear.bias": _UNUSED_CLASSIFIER,
    "stem.fc.weight": _UNUSED_CLASSIFIER,  # tools/convert-torchvision-to-d2.py output
    "stem.fc.bias": _UNUSED_CLASSIFIER,
    "stem.conv1.bias": _UNUSED_STEM_BIAS,
    "pixel_mean": Target(None, "input statistics are model.input parameters"),
    "pixel_std": Target(None, "input statistics are model.input parameters"),
}


def _expand(match: re.Match[str], template: str) -> str:
    index = int(match[1]) if match.re.groups and match[1].isdigit() else 0
    return match.expand(template.replace("{S}", str(index - 1)).replace("{L}", str(index - 2)))


def detectron2_target(name: str) -> Target | None:
    """detectron2 parameter name -> model key."""
    backbone_name = name.removeprefix("backbone.bottom_up.")
    if backbone_name in _D2_FIXED:
        return _D2_FIXED[backbone_name]
    for pattern, template in _D2_BACKBONE_RULES:
        if match := re.match(pattern, backbone_name):
            return Target(BACKBONE_PREFIX + _expand(match, template))
    for pattern, template, transform in _D2_HEAD_RULES:
        if match := re.match(pattern, name):
            return Target(_expand(match, template), transform=transform)
    return None


_TV_LEGACY = [
    (
        re.compile(r"^backbone\.fpn\.(inner|layer)_blocks\.(\d)\.(weight|bias)$"),
        r"backbone.fpn.\1_blocks.\2.0.\3",
    ),
    (re.compile(r"^rpn\.head\.conv\.(weight|bias)$"), r"rpn.head.conv.0.0.\1"),
]


def torchvision_detector_target(name: str) -> Target:
    """torchvision Faster R-CNN names are this model's; only pre-0.13 FPN/RPN names need updating."""
    for pattern, template in _TV_LEGACY:
        if pattern.match(name):
            return Target(pattern.sub(template, name))
    return Target(name)


def torchvision_resnet_target(name: str) -> Target:
    if name.startswith("fc."):
        return Target(None, _UNUSED_CLASSIFIER)
    return Target(BACKBONE_PREFIX + name)


_NAMING: dict[str, Callable[[str], Target | None]] = {
    "caffe2": caffe2_target,
    "detectron2": detectron2_target,
    "torchvision_detector": torchvision_detector_target,
    "torchvision_resnet": torchvision_resnet_target,
}


# ---------------------------------------------------------------------------------------------- values


def _as_tensor(value: Any) -> torch.Tensor:
    if isinstance(value, torch.Tensor):
        return value.detach().cpu()
    return torch.from_numpy(np.asarray(value, order="C"))  # ascontiguousarray would make 0-d arrays 1-d


def _detectron2_bg_first(value: torch.Tensor) -> torch.Tensor:
    """detectron2 puts the background logit LAST, torchvision FIRST."""
    return torch.cat([value[-1:], value[:-1]])


def _detectron2_bg_rows(value: torch.Tensor) -> torch.Tensor:
    """detectron2's class-specific regressor has no background rows; torchvision's 4 are unused: zeros."""
    return torch.cat([value.new_zeros((4, *value.shape[1:])), value])


_TRANSFORMS = {"bg_first": _detectron2_bg_first, "bg_rows": _detectron2_bg_rows}


def _shape(value: Any) -> str:
    return str(tuple(value.shape))


def convert_state_dict(
    checkpoint: Any,
    model_state: Mapping[str, torch.Tensor],
    *,
    source_name: str = "checkpoint",
    bn_fold: str = "exact",
    categories: Sequence[tuple[int, str]] | None = None,
    frozen_bn_eps: float = FROZEN_BN_EPS,
) -> tuple[dict[str, torch.Tensor], pd.DataFrame]:
    """Turn a loaded checkpoint into a complete state dict for the model whose state is `model_state`.

    Keys the checkpoint does not provide keep `model_state`'s values (random initialisation).

    Args:
        checkpoint: what `load_checkpoint` returned.
        model_state: the target model's `state_dict()`.
        source_name: named in errors and the report.
        bn_fold: for MSRA's folded BN (`_bn_s`/`_bn_b`): "exact" stores running_var = 1 - eps so the frozen
            BN equals Detectron's AffineChannel; "detectron2" stores running_var = 1 as detectron2 does (a
            relative scale error of 5e-6 per layer).
        categories: the model's (COCO category id, name) by label 1..K; a torchvision detector with COCO's
            91 classes then gives its box predictor rows by category id (`coco_rows`): all 91 to a model
            with `roi_heads.label_rows` (predictor_rows: coco_category_ids), which the categories fill.
        frozen_bn_eps: the model's `backbone.frozen_bn_eps`, for "exact" folding.

    Returns:
        The state dict, and the report (one row per key, columns REPORT_COLUMNS).

    Raises:
        WeightsConversionError: unreadable checkpoint, backbone weights missing, shape-mismatched or left
            unused (e.g. an R-101 file for an R-50 model), or folded-BN weights for a trainable BatchNorm.
    """
    if bn_fold not in {"exact", "detectron2"}:
        raise ValueError(f"weights.bn_fold must be 'exact' or 'detectron2', got {bn_fold!r}")
    state, source_format = unwrap_checkpoint(checkpoint, source_name)
    naming = _NAMING[source_format.split("/")[0]]
    row_notes: dict[str, str] = {}
    converted = {key: value.clone() for key, value in model_state.items()}
    rows: list[dict[str, str]] = []
    assigned: set[str] = set()
    if LABEL_ROWS_KEY in model_state:
        if categories is None:
            raise ValueError("a model with predictor_rows coco_category_ids needs the categories")
        converted[LABEL_ROWS_KEY] = coco_label_rows(*zip(*categories, strict=True), source_name)
        assigned.add(LABEL_ROWS_KEY)
        rows.append(label_rows_report_row(converted[LABEL_ROWS_KEY]))
    elif categories is not None and source_format == "torchvision_detector" and is_coco_predictor(state):
        ids, names = [i for i, _ in categories], [name for _, name in categories]
        state, rows_note = select_coco_rows(state, ids, names, source_name)
        row_notes = dict.fromkeys(PREDICTOR_KEYS, rows_note)
    folded_norms: dict[str, str] = {}  # norm module prefix -> the source key that was folded into it
    for name, value in state.items():
        target = naming(name)
        row = {
            "source_key": name,
            "source_shape": _shape(value),
            "target_key": "",
            "target_shape": "",
            "note": "",
        }
        if target is None:
            rows.append({**row, "status": "unused", "note": "no rule maps this key"})
            continue
        if target.key is None:
            zero = target.transform != "zero_bias" or not np.any(np.asarray(value))
            status = "expected_unused" if zero else "unused"
            rows.append(
                {**row, "status": status, "note": target.why if zero else "non-zero conv bias dropped"}
            )
            continue
        row["target_key"] = target.key
        if target.key not in model_state:
            if _is_frozen_norm_batch_count(target.key, model_state):
                rows.append({**row, "status": "expected_unused", "note": FROZEN_BN_BATCH_COUNT})
            else:
                rows.append({**row, "status": "unused", "note": "the model has no such key"})
            continue
        tensor = _TRANSFORMS[target.transform](_as_tensor(value)) if target.transform in _TRANSFORMS else None
        tensor = _as_tensor(value) if tensor is None else tensor
        expected = model_state[target.key]
        row["target_shape"] = _shape(expected)
        if tuple(tensor.shape) != tuple(expected.shape):
            rows.append({**row, "status": "shape_mismatch", "note": "kept the model's initialisation"})
            continue
        converted[target.key] = tensor.to(expected.dtype).clone()
        assigned.add(target.key)
        note = {"bg_first": "background logit moved first", "bg_rows": "zero background rows added"}
        rows.append({**row, "status": "mapped", "note": row_notes.get(name, note.get(target.transform, ""))})
        if target.transform == "fold_bn":
            folded_norms[target.key.rsplit(".", 1)[0]] = name
    rows += _fill_folded_statistics(
        folded_norms, converted, assigned, bn_fold, source_name, frozen_bn_eps=frozen_bn_eps
    )
    for key, value in model_state.items():
        if key not in assigned and not key.endswith("num_batches_tracked"):
            rows.append(
                {"status": "missing", "source_key": "", "target_key": key, "source_shape": "",
                 "target_shape": _shape(value), "note": "kept the model's initialisation"}
            )  # fmt: skip
    report = pd.DataFrame(rows, columns=REPORT_COLUMNS)
    _raise_on_backbone_gaps(report, source_name, source_format)
    logger.info("%s (%s): %s", source_name, source_format, report["status"].value_counts().to_dict())
    return converted, report


def _is_frozen_norm_batch_count(target_key: str, model_state: Mapping[str, torch.Tensor]) -> bool:
    """A BatchNorm2d's `num_batches_tracked` aimed at a norm the model has frozen (statistics, no count)."""
    norm, _, buffer = target_key.rpartition(".")
    return buffer == "num_batches_tracked" and f"{norm}.running_var" in model_state


def _fill_folded_statistics(
    folded_norms: dict[str, str],
    converted: dict[str, torch.Tensor],
    assigned: set[str],
    bn_fold: str,
    source_name: str,
    *,
    frozen_bn_eps: float,
) -> list[dict[str, str]]:
    trainable = sorted(norm for norm in folded_norms if f"{norm}.num_batches_tracked" in converted)
    if trainable:
        raise WeightsConversionError(
            f"{source_name}: MSRA weights with folded BatchNorm (_bn_s/_bn_b) need frozen BN, but "
            f"{trainable[0]} and {len(trainable) - 1} more are trainable BatchNorm2d; set "
            "model.backbone.norm: frozen_bn"
        )
    running_var = 1.0 - frozen_bn_eps if bn_fold == "exact" else 1.0
    rows = []
    for norm, source_key in folded_norms.items():
        for statistic, fill in (("running_mean", 0.0), ("running_var", running_var)):
            key = f"{norm}.{statistic}"
            converted[key] = torch.full(converted[key].shape, fill, dtype=converted[key].dtype)
            assigned.add(key)
            rows.append(
                {"status": "mapped", "source_key": source_key, "target_key": key, "source_shape": "",
                 "target_shape": _shape(converted[key]), "note": f"folded BN: {statistic} = {fill:g}"}
            )  # fmt: skip
    return rows


def _raise_on_backbone_gaps(report: pd.DataFrame, source_name: str, source_format: str) -> None:
    backbone = report["target_key"].str.startswith(BACKBONE_PREFIX) | (
        (report["status"] == "unused")
        & report["source_key"].str.match(r"^(res\d|backbone\.bottom_up\.|layer\d)")
    )
    problems = report[backbone & report["status"].isin(["missing", "shape_mismatch", "unused"])]
    if problems.empty:
        return
    listed = [
        f"{row.status}: {f'{row.source_key} {row.source_shape}'.strip() or '-'} -> "
        f"{f'{row.target_key} {row.target_shape}'.strip() or '-'}"
        for row in problems.head(15).itertuples()
    ]
    more = f"\n  ... and {len(problems) - 15} more" if len(problems) > 15 else ""
    raise WeightsConversionError(
        f"{source_name} ({source_format}) leaves {len(problems)} backbone weight(s) unloaded:\n  "
        + "\n  ".join(listed)
        + more
        + "\nWhole blocks missing or unused: does model.backbone.depth match the checkpoint (R-50 vs R-101)?",
        report=report,
    )


def convention_warnings(source_format: str, model_cfg: Mapping[str, Any]) -> list[str]:
    """Input and stride conventions of the weights that the model configuration contradicts.

    Shapes cannot tell them apart, so such weights load without complaint and quietly lose accuracy.
    """
    msra = source_format == "caffe2" or (
        source_format.startswith("detectron2/") and source_format != "detectron2/torchvision"
    )
    expected_format, expected_stride_in_1x1 = ("BGR", True) if msra else ("RGB", False)
    origin = "MSRA/detectron2" if msra else "torchvision"
    warnings = []
    if model_cfg["input"]["format"] != expected_format:
        warnings.append(
            f"{origin} weights expect {expected_format} input but model.input.format is "
            f"{model_cfg['input']['format']} (check pixel_mean/pixel_std too)"
        )
    bottleneck = model_cfg["backbone"]["depth"] >= 50
    if bottleneck and model_cfg["backbone"]["stride_in_1x1"] != expected_stride_in_1x1:
        warnings.append(
            f"{origin} weights need model.backbone.stride_in_1x1: {str(expected_stride_in_1x1).lower()}"
        )
    return warnings
