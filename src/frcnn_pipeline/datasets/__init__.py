"""Kedro datasets of this project (used from the catalog by their full path)."""

from .unchanged import UNCHANGED, KeepUnchangedDataset

__all__ = ["UNCHANGED", "KeepUnchangedDataset"]
