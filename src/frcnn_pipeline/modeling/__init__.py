"""Layer 2: the Faster R-CNN model, built from torchvision detection components plus detectron2 options."""

from frcnn_pipeline.modeling.config import default_model_config, resolve_model_config
from frcnn_pipeline.modeling.model import FasterRCNN, build_model

__all__ = ["FasterRCNN", "build_model", "default_model_config", "resolve_model_config"]
