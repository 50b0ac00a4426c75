"""Predict with the weights pipeline's output (e.g. torchvision's converted COCO checkpoint), not a trained
model."""

from .pipeline import create_pipeline

__all__ = ["create_pipeline"]
