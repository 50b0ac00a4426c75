"""Evaluate the weights pipeline's output (e.g. a converted detectron2 checkpoint), not a trained model."""

from .pipeline import create_pipeline

__all__ = ["create_pipeline"]
