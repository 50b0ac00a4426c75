"""Ingest: demo generation, COCO validation, the split tables and the clean evaluation ground truth."""

from .pipeline import create_pipeline

__all__ = ["create_pipeline"]
