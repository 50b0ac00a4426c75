"""The export pipeline: the model as ONNX graphs, checked on the first evaluation split, then saved.

Outputs live in the namespace ``export`` (``export_initial_weights`` for `initial_weights`):
``<namespace>.onnx_model`` (dynamic graph), ``.onnx_model_fixed`` (fixed-shape graph), ``.deployment`` (their
descriptions, the sidecar JSON) and ``.check_report``, each versioned. The graphs are saved only when the
check passes; a failed check still saves its report.
"""

from kedro.pipeline import Node, Pipeline

from frcnn_pipeline.pipelines.splits import evaluation_splits, for_split

from .nodes import check_onnx_export, export_onnx


def create_pipeline(**kwargs) -> Pipeline:
    """``model`` (keyword): the catalog entry to export, ``trained_model`` by default; ``namespace``: the
    namespace (and folder) of its outputs, ``export`` by default."""
    model = kwargs.get("model", "trained_model")
    namespace = kwargs.get("namespace", "export")
    split = evaluation_splits()[0]
    return Pipeline(
        [
            Node(export_onnx, ["model", "params:model", "params:export"], "exported", name="export_onnx"),
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
                    "params:runtime",
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
        },
        parameters={"params:model", "params:export", "params:runtime"},
        namespace=namespace,
        tags=namespace,
    )
