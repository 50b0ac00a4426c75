"""All parameter sections of the project, validated together at the start of a run."""

from __future__ import annotations

import difflib
from collections.abc import Iterator, Mapping
from typing import Any

from pydantic import BaseModel

from frcnn_pipeline.config.export import ExportParams
from frcnn_pipeline.config.inference import EvaluateParams, PredictParams
from frcnn_pipeline.config.ingest import IngestParams
from frcnn_pipeline.config.model import ModelParams
from frcnn_pipeline.config.runtime import RuntimeParams
from frcnn_pipeline.config.section import ParameterError, Section, submodel
from frcnn_pipeline.config.train import TrainParams
from frcnn_pipeline.config.weights import WeightsParams

# Top-level parameter keys, in the order data flows through the pipelines.
SECTIONS: dict[str, type[Section]] = {
    "ingest": IngestParams,
    "model": ModelParams,
    "weights": WeightsParams,
    "runtime": RuntimeParams,
    "train": TrainParams,
    "evaluate": EvaluateParams,
    "predict": PredictParams,
    "export": ExportParams,
}


def validate_parameters(parameters: Mapping[str, Any]) -> dict[str, Section]:
    """Every section present in ``parameters`` (as Kedro resolved them), validated, defaults filled.

    Top-level keys starting with ``_`` are templating blocks (Kedro's convention, e.g. the recipes) and
    are not parameters.

    Raises:
        ParameterError: one line per problem in any section, each naming the full key.
    """
    problems: list[str] = []
    validated: dict[str, Section] = {}
    for name, value in parameters.items():
        if name.startswith("_"):
            continue
        section = SECTIONS.get(name)
        if section is None:
            close = difflib.get_close_matches(name, SECTIONS, n=1, cutoff=0.6)
            hint = f"did you mean {close[0]}?" if close else f"sections: {', '.join(SECTIONS)}"
            problems.append(f"{name}: unknown parameter section; {hint}")
            continue
        try:
            validated[name] = section.parse(value, name)
        except ParameterError as error:
            problems += error.problems
    if problems:
        raise ParameterError(problems)
    return validated


def flatten(values: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """``{"train": {"solver": {"base_lr": 0.02}}}`` -> ``{"train.solver.base_lr": 0.02}``: mappings are walked
    (an empty one leaves no key), lists are values. ``prefix`` goes before every key, with a dot."""
    flat: dict[str, Any] = {}
    for key, value in values.items():
        name = f"{prefix}.{key}" if prefix else str(key)
        if isinstance(value, Mapping):
            flat.update(flatten(value, name))
        else:
            flat[name] = value
    return flat


def schema_keys(model: type[BaseModel], prefix: str = "") -> Iterator[tuple[str, Any]]:
    """``(dotted key, pydantic FieldInfo)`` of every leaf parameter under ``model``, in declaration order."""
    for name, field in model.model_fields.items():
        key = f"{prefix}.{name}" if prefix else name
        nested = submodel(field.annotation)
        if nested is not None:
            yield from schema_keys(nested, key)
        else:
            yield key, field


def all_schema_keys() -> dict[str, Any]:
    """Every parameter the project knows: ``{"runtime.nproc_per_node": FieldInfo, ...}``."""
    return {key: field for name, section in SECTIONS.items() for key, field in schema_keys(section, name)}
