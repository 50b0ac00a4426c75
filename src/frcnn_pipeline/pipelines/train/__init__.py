"""Train: the detector on the ingest tables, on CPU, CUDA or Ascend NPUs, one or many workers."""

from .pipeline import create_pipeline

__all__ = ["create_pipeline"]
