"""Evaluate `best_model`: the weights of the best evaluation during training (train.best_metric)."""

from .pipeline import create_pipeline

__all__ = ["create_pipeline"]
