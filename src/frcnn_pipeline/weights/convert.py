"""Convert Caffe2/Detectron, detectron2 and torchvision checkpoints into this project's model state dict.

Keys are translated by the rules in `key_rules`, so every key is accounted for in a report: mapped, missing,
unused, shape_mismatch or expected_unused.
"""

import logging
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np
import pandas as pd
import torch

from frcnn_pipeline.weights.checkpoint import WeightsConversionError, unwrap_checkpoint
from frcnn_pipeline.weights.coco_rows import (
    LABEL_ROWS_KEY,
    PREDICTOR_KEYS,
    coco_label_rows,
    is_coco_predictor,
    label_rows_report_row,
    select_coco_rows,
)
from frcnn_pipeline.weights.key_rules import BACKBONE_PREFIX, KEY_RULES, Target

logger = logging.getLogger(__name__)

REPORT_COLUMNS = ["status", "source_key", "target_key", "source_shape", "target_shape", "note"]
# FrozenBatchNorm2d's eps: a folded MSRA scale s is stored with running_var = 1 - eps, so that
# s / sqrt(running_var + eps) == s and the layer is Detectron's AffineChannel exactly.
FROZEN_BN_EPS = 1e-5
# torchvision and detectron2 save BatchNorm2d's count of training batches; a frozen BN has no use for it.
FROZEN_BN_BATCH_COUNT = "ignored: a frozen BN (FrozenBatchNorm2d) keeps no count of training batches"


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
    converted = {key: value.clone() for key, value in model_state.items()}
    rows: list[dict[str, str]] = []
    assigned: set[str] = set()
    state, label_rows, row_notes = _coco_predictor_rows(
        state, source_format, model_state, categories, source_name
    )
    if label_rows is not None:
        converted[LABEL_ROWS_KEY] = label_rows
        assigned.add(LABEL_ROWS_KEY)
        rows.append(label_rows_report_row(label_rows))
    key_rows, mapped, folded_norms = _map_keys(
        state, KEY_RULES[source_format.split("/")[0]], model_state, row_notes
    )
    rows += key_rows
    converted.update(mapped)
    assigned.update(mapped)
    rows += _fill_folded_statistics(
        folded_norms, converted, assigned, bn_fold, source_name, frozen_bn_eps=frozen_bn_eps
    )
    rows += _missing_rows(model_state, assigned)
    report = pd.DataFrame(rows, columns=REPORT_COLUMNS)
    _raise_on_backbone_gaps(report, source_name, source_format)
    logger.info("%s (%s): %s", source_name, source_format, report["status"].value_counts().to_dict())
    return converted, report


def _map_keys(
    state: Mapping[str, Any],
    naming: Callable[[str], Target | None],
    model_state: Mapping[str, torch.Tensor],
    row_notes: Mapping[str, str],
) -> tuple[list[dict[str, str]], dict[str, torch.Tensor], dict[str, str]]:
    """Every checkpoint key's report row, the tensors mapped onto model keys, and the norm modules that got
    folded BN (prefix -> the source key folded into it)."""
    rows, mapped, folded_norms = [], {}, {}
    for name, value in state.items():
        target = naming(name)
        row, tensor = _convert_key(name, value, target, model_state)
        if tensor is not None:
            mapped[target.key] = tensor
            row["note"] = row_notes.get(name, row["note"])
            if target.transform == "fold_bn":
                folded_norms[target.key.rsplit(".", 1)[0]] = name
        rows.append(row)
    return rows, mapped, folded_norms


def _coco_predictor_rows(
    state: dict[str, Any],
    source_format: str,
    model_state: Mapping[str, torch.Tensor],
    categories: Sequence[tuple[int, str]] | None,
    source_name: str,
) -> tuple[dict[str, Any], torch.Tensor | None, dict[str, str]]:
    """Box predictor rows by COCO category id: the state (a torchvision COCO predictor cut to the categories'
    rows), `roi_heads.label_rows` for a model that keeps all 91 rows (else None), notes for the report."""
    if LABEL_ROWS_KEY in model_state:
        if categories is None:
            raise ValueError("a model with predictor_rows coco_category_ids needs the categories")
        return state, coco_label_rows(*zip(*categories, strict=True), source_name), {}
    if categories is not None and source_format == "torchvision_detector" and is_coco_predictor(state):
        ids, names = [i for i, _ in categories], [name for _, name in categories]
        state, rows_note = select_coco_rows(state, ids, names, source_name)
        return state, None, dict.fromkeys(PREDICTOR_KEYS, rows_note)
    return state, None, {}


_TRANSFORM_NOTES = {"bg_first": "background logit moved first", "bg_rows": "zero background rows added"}


def _convert_key(
    name: str, value: Any, target: Target | None, model_state: Mapping[str, torch.Tensor]
) -> tuple[dict[str, str], torch.Tensor | None]:
    """The report row of one checkpoint key, and its tensor for the model when it maps onto a model key."""
    row = {
        "source_key": name,
        "source_shape": _shape(value),
        "target_key": "",
        "target_shape": "",
        "note": "",
    }
    if target is None:
        return {**row, "status": "unused", "note": "no rule maps this key"}, None
    if target.key is None:
        zero = target.transform != "zero_bias" or not np.any(np.asarray(value))
        status = "expected_unused" if zero else "unused"
        return {**row, "status": status, "note": target.why if zero else "non-zero conv bias dropped"}, None
    row["target_key"] = target.key
    if target.key not in model_state:
        if _is_frozen_norm_batch_count(target.key, model_state):
            return {**row, "status": "expected_unused", "note": FROZEN_BN_BATCH_COUNT}, None
        return {**row, "status": "unused", "note": "the model has no such key"}, None
    tensor = _as_tensor(value)
    if target.transform in _TRANSFORMS:
        tensor = _TRANSFORMS[target.transform](tensor)
    expected = model_state[target.key]
    row["target_shape"] = _shape(expected)
    if tuple(tensor.shape) != tuple(expected.shape):
        return {**row, "status": "shape_mismatch", "note": "kept the model's initialisation"}, None
    mapped = {**row, "status": "mapped", "note": _TRANSFORM_NOTES.get(target.transform, "")}
    return mapped, tensor.to(expected.dtype).clone()


def _missing_rows(model_state: Mapping[str, torch.Tensor], assigned: set[str]) -> list[dict[str, str]]:
    return [
        {"status": "missing", "source_key": "", "target_key": key, "source_shape": "",
         "target_shape": _shape(value), "note": "kept the model's initialisation"}
        for key, value in model_state.items()
        if key not in assigned and not key.endswith("num_batches_tracked")
    ]  # fmt: skip


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
