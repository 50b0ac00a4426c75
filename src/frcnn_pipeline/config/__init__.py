"""The parameter schema: every section, key, type, default and meaning (pydantic). Kedro-free; imports nothing
else of the project, so every layer may use it.

Adding a parameter is one line in its section's module, e.g. in runtime.py:
``my_key: int = Field(1, ge=1, description="what it does")``. The docs are regenerated with
``python -m frcnn_pipeline.framework.parameter_docs``.
"""

from frcnn_pipeline.config.export import ExportCheckParams, ExportParams
from frcnn_pipeline.config.inference import EvaluateParams, InferenceParams, PredictParams, SamplesParams
from frcnn_pipeline.config.ingest import DemoDatasetParams, DemoParams, IngestParams, SeverityParams
from frcnn_pipeline.config.model import ModelParams
from frcnn_pipeline.config.project import (
    SECTIONS,
    all_schema_keys,
    flatten,
    schema_keys,
    validate_parameters,
)
from frcnn_pipeline.config.runtime import AmpParams, RuntimeParams
from frcnn_pipeline.config.section import ParameterError, Section
from frcnn_pipeline.config.train import SolverParams, TrainParams
from frcnn_pipeline.config.weights import WeightsParams

__all__ = [
    "SECTIONS",
    "AmpParams",
    "DemoDatasetParams",
    "DemoParams",
    "EvaluateParams",
    "ExportCheckParams",
    "ExportParams",
    "InferenceParams",
    "IngestParams",
    "ModelParams",
    "ParameterError",
    "PredictParams",
    "RuntimeParams",
    "SamplesParams",
    "Section",
    "SeverityParams",
    "SolverParams",
    "TrainParams",
    "WeightsParams",
    "all_schema_keys",
    "flatten",
    "schema_keys",
    "validate_parameters",
]
