"""Evaluate: the detector on the val split, with pycocotools-identical COCO box metrics, tables and plots."""

from .pipeline import create_pipeline

__all__ = ["create_pipeline"]
