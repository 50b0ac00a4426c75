"""A detector as saved: its weights with the model config and the classes they belong to, in one file.

Weights alone do not say how to use them: a model trained on BGR input loads without complaint into a model
built for RGB (the shapes are the same) and its AP silently drops. So a trained model is saved with its
resolved `model:` section and its class mapping as safetensors metadata, and `evaluate` / `predict` build it
from what was saved. Parameters that contradict the saved config are an error naming the key.

`initial_weights` (random, pretrained or a converted model-zoo checkpoint) carries its class mapping and
source but no model config: it was never trained, so it is built from the current `model:` parameters.
"""

from __future__ import annotations

import json
import logging
import struct
from dataclasses import dataclass, field
from typing import Any

import pandas as pd
import safetensors.torch
import torch

from frcnn_pipeline.config.model import ModelParams
from frcnn_pipeline.console.detail import DETAIL

log = logging.getLogger(__name__)

FORMAT = "frcnn_pipeline.detector/1"
TRAINED_MODEL = "trained_model"
BEST_MODEL = "best_model"  # the best evaluation during training (train.eval_period, train.best_metric)
INITIAL_WEIGHTS = "initial_weights"

# Test-time filtering is an inference option (evaluate.inference / predict.inference set it), not a property
# of the trained model: these keys may differ from the saved config.
INFERENCE_OPTION_KEYS = frozenset(
    {"roi_heads.score_thresh_test", "roi_heads.nms_thresh_test", "roi_heads.detections_per_image"}
)


@dataclass
class SavedDetector:
    """Weights and what is needed to rebuild and read them.

    Attributes:
        state_dict: the model's state dict.
        kind: ``trained_model`` or ``initial_weights`` (``unknown`` for a bare safetensors file).
        model_config: the ``model:`` section the weights were trained with; None when never trained (in the
            file: the section as JSON, possibly partial when saved by an older version).
        categories: the class mapping by label: ``[{"label": 0, "category_id": 3, "name": "cat"}, ...]``.
        provenance: what made them (a training run's name, iterations and data fingerprint; a weights source).
        origin: where they were loaded from (``path``, ``version``, ``sha256`` of the file); not saved.
    """

    state_dict: dict[str, torch.Tensor]
    kind: str
    model_config: ModelParams | None = None
    categories: list[dict[str, Any]] | None = None
    provenance: dict[str, Any] = field(default_factory=dict)
    origin: dict[str, Any] = field(default_factory=dict)

    def to_bytes(self) -> bytes:
        """The safetensors file: tensors, and the rest as JSON strings in the header's metadata."""
        metadata = {
            "format": FORMAT,
            "kind": self.kind,
            "model_config": json.dumps(None if self.model_config is None else self.model_config.model_dump()),
            "categories": json.dumps(self.categories),
            "provenance": json.dumps(self.provenance, default=str),
        }
        return safetensors.torch.save(self.state_dict, metadata=metadata)

    @classmethod
    def from_bytes(cls, data: bytes, origin: dict[str, Any] | None = None) -> SavedDetector:
        """Reads a file written by `to_bytes`; a bare safetensors state dict gives kind ``unknown``."""
        metadata = read_safetensors_metadata(data)
        state_dict = safetensors.torch.load(data)
        if metadata.get("format") != FORMAT:
            return cls(state_dict, kind="unknown", origin=dict(origin or {}))
        model_config = json.loads(metadata["model_config"])
        return cls(
            state_dict,
            kind=metadata["kind"],
            model_config=None if model_config is None else ModelParams.of_saved(model_config),
            categories=json.loads(metadata["categories"]),
            provenance=json.loads(metadata["provenance"]),
            origin=dict(origin or {}),
        )

    def describe(self, model_config_from: str) -> dict[str, Any]:
        """What a report says about the model it measured."""
        return {
            "kind": self.kind,
            "version": self.origin.get("version"),
            "sha256": self.origin.get("sha256"),
            "path": self.origin.get("path"),
            "model_config_from": model_config_from,
            "provenance": self.provenance,
        }

    @property
    def name(self) -> str:
        version = self.origin.get("version")
        return f"{self.kind} (version {version})" if version else self.kind


def read_safetensors_metadata(data: bytes) -> dict[str, str]:
    """The ``__metadata__`` of a safetensors file held in memory.

    safetensors reads metadata only through ``safe_open`` on a local path; the catalog may hand us bytes from
    any fsspec filesystem, and the header is simple: an 8-byte little-endian length, then that much JSON.
    """
    if len(data) < 8:
        raise ValueError(f"not a safetensors file: {len(data)} bytes")
    (length,) = struct.unpack("<Q", data[:8])
    if length > len(data) - 8:
        raise ValueError("not a safetensors file, or a truncated one: the header runs past the end")
    header = json.loads(data[8 : 8 + length])
    return header.get("__metadata__") or {}


def category_mapping(categories: pd.DataFrame) -> list[dict[str, Any]]:
    """The categories table as the class mapping saved with a model, ordered by label 0..K-1."""
    table = categories.sort_values("label")
    if table["label"].tolist() != list(range(len(table))):
        raise ValueError(
            f"categories.label must be 0..{len(table) - 1} without gaps, got {table['label'].tolist()[:10]}; "
            "re-run the ingest pipeline."
        )
    return [
        {"label": int(label), "category_id": int(category_id), "name": str(name)}
        for label, category_id, name in zip(table["label"], table["category_id"], table["name"], strict=True)
    ]


_NODE_PLACEHOLDER = (
    "a placeholder written by a node other than node 0 of a multi-node run; use the model saved on node 0"
)


def require_weights(saved: SavedDetector) -> None:
    """Raises: ValueError: ``saved`` is a placeholder without weights, saying why (its `no_weights`)."""
    if saved.state_dict:
        return
    reason = saved.provenance.get("no_weights", _NODE_PLACEHOLDER)
    raise ValueError(f"{saved.name} holds no weights: {reason}.")


def require_categories(saved: SavedDetector) -> list[dict[str, Any]]:
    """The class mapping saved with the model (predict has no other source of class names)."""
    if saved.categories is None:
        raise ValueError(
            f"{saved.name} carries no class mapping (saved by an earlier version of this project), so its "
            "labels cannot be named. Retrain, or re-run the weights pipeline for initial_weights."
        )
    return saved.categories


def check_same_categories(saved: SavedDetector, categories: pd.DataFrame) -> None:
    """The split's categories must be the classes the model predicts, label for label."""
    current = category_mapping(categories)
    if saved.categories is None or saved.categories == current:
        return
    differ = [
        f"label {i}: model {s['category_id']}/{s['name']!r}, data {c['category_id']}/{c['name']!r}"
        for i, (s, c) in enumerate(zip(saved.categories, current, strict=False))
        if s != c
    ]
    if len(saved.categories) != len(current):
        differ.insert(0, f"{len(saved.categories)} classes in the model, {len(current)} in the data")
    raise ValueError(
        f"{saved.name} predicts other classes than the ingested categories ({'; '.join(differ[:5])}). "
        "Evaluate it on the data it was trained for (re-run ingest with that data), or retrain."
    )


def inference_model_config(saved: SavedDetector, parameters: ModelParams) -> tuple[ModelParams, str]:
    """The model config to build ``saved`` with, and where it came from (``saved`` or ``parameters``).

    Raises:
        ValueError: ``parameters`` (the ``model:`` section) contradicts the config the model was trained
            with, naming each key with both values.
    """
    current = parameters
    if saved.model_config is None:
        if saved.kind == INITIAL_WEIGHTS:
            log.info(
                "%s: built from params:model (initial weights carry no training config)",
                saved.name,
                extra=DETAIL,
            )
        else:
            log.warning(
                "%s carries no model config (saved by an earlier version of this project): built from "
                "params:model, which must match its training config. Retrain to save the config with it.",
                saved.name,
            )
        return current, "parameters"
    trained = saved.model_config
    trained_flat, current_flat = trained.flat(), current.flat()
    conflicts = [
        f"model.{key} is {current_flat[key]!r} in parameters but {saved.name} was trained with "
        f"{trained_flat[key]!r}"
        for key in trained_flat
        if key not in INFERENCE_OPTION_KEYS and trained_flat[key] != current_flat[key]
    ]
    if conflicts:
        raise ValueError(
            "; ".join(conflicts)
            + ". The model is built from the config saved with it: remove the override (or use the --env it "
            "was trained with), or retrain. Test-time filtering is set by evaluate.inference / "
            "predict.inference."
        )
    log.info("%s: built from the model config saved with it", saved.name, extra=DETAIL)
    return trained, "saved"
