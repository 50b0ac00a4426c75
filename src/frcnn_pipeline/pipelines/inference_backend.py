"""The inference backend the evaluate and predict pipelines are built for (`runtime.inference_backend`).

With `onnxruntime` their inference node also reads the graph the export pipeline wrote, so the pipeline's
inputs depend on a parameter. As for the evaluation splits (`splits.py`), `InferenceBackendHook`
(frcnn_pipeline.hooks) reads it from the run's configuration when the session's context exists, and the
pipelines built afterwards have that input; without the hook (`kedro viz`, a test building a pipeline) it
is `torch`, as in conf/base.
"""

from __future__ import annotations

TORCH = "torch"
ONNXRUNTIME = "onnxruntime"

# The exported graph each model entry is run from with onnxruntime (the export pipelines' outputs).
EXPORTED_GRAPHS = {
    "trained_model": "export.onnx_model",
    "initial_weights": "export_initial_weights.onnx_model",
}

_backend = TORCH


def inference_backend() -> str:
    """The backend pipelines are built for now."""
    return _backend


def use_inference_backend(name: str) -> bool:
    """Build pipelines for this backend from now on; True if that changed it."""
    global _backend  # noqa: PLW0603 (Kedro's pipeline registry takes no arguments)
    changed = name != _backend
    _backend = name
    return changed


def graph_input(model: str) -> list[str]:
    """The extra input of an inference node on ``model``: its exported graph with onnxruntime, else none."""
    return [EXPORTED_GRAPHS[model]] if _backend == ONNXRUNTIME else []
