"""The shape of a run's pipelines: which evaluation splits they have and which inference backend evaluate and
predict run on. Both come from parameters (`ingest.splits`, `runtime.inference_backend`), yet Kedro builds
pipelines from code: every `create_pipeline` takes the shape as an argument, and the run configuration
(frcnn_pipeline.framework.run_config) decides it once per run. `DEFAULT_SHAPE` is conf/base's (`val`,
`torch`): what `kedro viz` and a test building a pipeline get.
"""

from __future__ import annotations

from dataclasses import dataclass

from frcnn_pipeline.config import IngestParams, RuntimeParams
from frcnn_pipeline.pipelines.inference_backend import ONNXRUNTIME, TORCH, exported_graph
from frcnn_pipeline.pipelines.splits import DEFAULT_EVALUATION_SPLITS, evaluation_splits_of


@dataclass(frozen=True)
class PipelineShape:
    evaluation_splits: tuple[str, ...] = DEFAULT_EVALUATION_SPLITS
    inference_backend: str = TORCH

    @classmethod
    def of(cls, ingest: IngestParams, runtime: RuntimeParams) -> PipelineShape:
        """The shape the validated ``ingest`` and ``runtime`` sections ask for.

        Raises:
            ValueError: splits that name no pipeline shape (see `splits.evaluation_splits_of`).
        """
        return cls(evaluation_splits_of(ingest.splits), runtime.inference_backend)

    @property
    def first_evaluation_split(self) -> str:
        """Where training evaluates and export checks its graphs."""
        return self.evaluation_splits[0]

    def graph_input(self, model: str) -> list[str]:
        """The extra input of an inference node on ``model``: its exported graph on onnxruntime, else none."""
        return [exported_graph(model)] if self.inference_backend == ONNXRUNTIME else []


DEFAULT_SHAPE = PipelineShape()
