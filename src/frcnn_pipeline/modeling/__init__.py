"""Layer 2: the Faster R-CNN model, built from torchvision detection components plus detectron2 options."""

from frcnn_pipeline.modeling.model import FasterRCNN, StaticFasterRCNN, build_model
from frcnn_pipeline.modeling.static import StaticBatch

__all__ = ["FasterRCNN", "StaticBatch", "StaticFasterRCNN", "build_model"]
