"""The export pipeline: the model as ONNX graphs, checked on the first evaluation split, then saved.

Outputs live in the exported model's namespace (`inference_backend.EXPORT_NAMESPACES`: ``export`` for
`trained_model`, ``export_best_model``, ``export_initial_weights``): ``<namespace>.onnx_model`` (dynamic
graph), ``.onnx_model_fixed`` (fixed-shape graph), ``.deployment`` (their descriptions, the sidecar JSON)
and ``.check_report``, each versioned. The graphs are saved only when the check passes; a failed check
still saves its report.
"""

from kedro.pipeline import Node, Pipeline

from frcnn_pipeline.pipelines.inference_backend import EXPORT_NAMESPACES
from frcnn_pipeline.pipelines.run_inputs import RUN_WORLD
from frcnn_pipeline.pipelines.shape import DEFAULT_SHAPE, PipelineShape
from frcnn_pipeline.pipelines.splits import for_split

from .nodes import check_onnx_export, export_onnx


def create_pipeline(shape: PipelineShape = DEFAULT_SHAPE, model: str = "trained_model") -> Pipeline:
    """``model``: the catalog entry to export, checked on ``shape``'s first evaluation split; its outputs go
    to its namespace (and folder) in `EXPORT_NAMESPACES`, which evaluate and predict read on onnxruntime."""
    namespace = EXPORT_NAMESPACES[model]
    split = shape.first_evaluation_split
    return Pipeline(
        [
            Node(
                export_onnx,
                ["model", "images", "params:model", "params:export"],
                "exported",
                name="export_onnx",
            ),
            Node(
                for_split(check_onnx_export, split),
                [
                    "model",
                    "exported",
                    "images",
                    "ground_truth",
                    "categories",
                    "params:model",
                    "params:export",
                    "params:evaluate",
                    "params:runtime",
                    RUN_WORLD,
                ],
                ["onnx_model", "onnx_model_fixed", "deployment", "check_report"],
                name="check_onnx_export",
            ),
        ],
        inputs={
            "model": model,
            "images": f"{split}_images",
            "ground_truth": f"{split}_ground_truth",
            "categories": "categories",
            RUN_WORLD: RUN_WORLD,
        },
        parameters={"params:model", "params:export", "params:evaluate", "params:runtime"},
        namespace=namespace,
        tags=namespace,
    )
