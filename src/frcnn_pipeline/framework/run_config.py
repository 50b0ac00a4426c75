"""One frozen, typed configuration per run: every parameter section validated once, and the run's decisions.

Built once from the session's parameters (env and --params applied) by the run-configuration hook
(frcnn_pipeline.framework.hooks), which hands each node its `params:<section>` inputs from here. What the run
decides from its parameters is decided here too, once: the world (which process saves, what each spawns) and
the pipeline shape (evaluation splits, inference backend).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from frcnn_pipeline.config import (
    SECTIONS,
    EvaluateParams,
    ExportParams,
    IngestParams,
    ModelParams,
    PredictParams,
    RuntimeParams,
    TrainParams,
    WeightsParams,
    validate_parameters,
)
from frcnn_pipeline.pipelines.shape import PipelineShape
from frcnn_pipeline.runtime.world import WorldConfig

PARAMS_PREFIX = "params:"


@dataclass(frozen=True)
class RunConfig:
    """Every section of `frcnn_pipeline.config.SECTIONS` (defaults where the configuration has none), the
    world and the pipeline shape."""

    ingest: IngestParams
    model: ModelParams
    weights: WeightsParams
    runtime: RuntimeParams
    train: TrainParams
    evaluate: EvaluateParams
    predict: PredictParams
    export: ExportParams
    world: WorldConfig
    shape: PipelineShape

    @classmethod
    def from_parameters(
        cls, parameters: Mapping[str, Any], environ: Mapping[str, str] | None = None
    ) -> RunConfig:
        """``parameters`` as Kedro resolved them, validated; the world from the launcher's ``environ``
        variables (the process's own by default).

        Raises:
            ParameterError: one line per problem in any section, each naming the full key.
            ValueError: evaluation splits no pipeline can be built for (`splits.evaluation_splits_of`).
            LauncherConfigError: runtime parameters that contradict the launcher's environment.
        """
        validated = validate_parameters(parameters)
        sections: dict[str, Any] = {
            name: validated.get(name) or section() for name, section in SECTIONS.items()
        }
        runtime = sections["runtime"]
        return cls(
            **sections,
            world=WorldConfig.from_runtime(runtime, environ),
            shape=PipelineShape.of(sections["ingest"], runtime),
        )

    def parameter(self, name: str) -> Any:
        """The validated value of Kedro's dataset ``params:<section>[.<key>...]``.

        Raises:
            KeyError: no such section or key.
        """
        value: Any = self
        for part in name.removeprefix(PARAMS_PREFIX).split("."):
            if part not in _keys(value):
                raise KeyError(f"{name}: no such parameter (sections: {', '.join(SECTIONS)})")
            value = getattr(value, part)
        return value


def _keys(value: Any) -> set[str]:
    if isinstance(value, RunConfig):
        return set(SECTIONS)
    return set(type(value).model_fields) if hasattr(type(value), "model_fields") else set()
