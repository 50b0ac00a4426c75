"""The inference backend the evaluate and predict pipelines are built for (`runtime.inference_backend`).

With `onnxruntime` their inference node also reads the graph the export pipeline wrote, so the pipeline's
inputs depend on a parameter: the backend is part of the run's `PipelineShape` (shape.py), as the evaluation
splits are. Where no run decides it (`kedro viz`, a test building a pipeline) it is `torch`, as in conf/base.
"""

from __future__ import annotations

TORCH = "torch"
ONNXRUNTIME = "onnxruntime"

# The export pipeline (and namespace) of each model entry evaluate or predict runs: with onnxruntime they
# read its `<namespace>.onnx_model` (tests/pipelines/test_inference_backend.py holds every pipeline to it).
EXPORT_NAMESPACES = {
    "trained_model": "export",
    "best_model": "export_best_model",
    "initial_weights": "export_initial_weights",
}


def exported_graph(model: str) -> str:
    """The catalog entry of ``model``'s dynamic graph, which its export pipeline writes.

    Raises:
        ValueError: ``model`` has no export pipeline (a pipeline added without one: give it one).
    """
    if model not in EXPORT_NAMESPACES:
        raise ValueError(
            f"{model!r} has no export pipeline, so evaluate and predict cannot run it on onnxruntime: add "
            "one (as pipelines/export_best_model) and its namespace to inference_backend.EXPORT_NAMESPACES"
        )
    return f"{EXPORT_NAMESPACES[model]}.onnx_model"
