"""Export `initial_weights` (e.g. a converted detectron2 model-zoo checkpoint) as the export pipeline does."""

from .pipeline import create_pipeline

__all__ = ["create_pipeline"]
