"""Export `best_model` (the best evaluation during training) as the export pipeline does."""

from .pipeline import create_pipeline

__all__ = ["create_pipeline"]
