"""Predict: the detector on a folder or list of images; results JSON and the images with boxes drawn."""

from .pipeline import create_pipeline

__all__ = ["create_pipeline"]
