"""Export: the detector as ONNX graphs (dynamic, fixed-shape), checked by ONNX Runtime against PyTorch."""

from .pipeline import create_pipeline

__all__ = ["create_pipeline"]
