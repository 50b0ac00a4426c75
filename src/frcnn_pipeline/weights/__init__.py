"""Layer 3: fetch pretrained weights safely and convert them into the model's state dict."""

from frcnn_pipeline.weights.checkpoint import WeightsConversionError, load_checkpoint, unwrap_checkpoint
from frcnn_pipeline.weights.convert import convert_state_dict
from frcnn_pipeline.weights.fetch import WeightsFetchError, fetch_url, fetch_weights, resolve_source
from frcnn_pipeline.weights.safe_pickle import UnsafePickleError, load_weights_pickle

__all__ = [
    "UnsafePickleError",
    "WeightsConversionError",
    "WeightsFetchError",
    "convert_state_dict",
    "fetch_url",
    "fetch_weights",
    "load_checkpoint",
    "load_weights_pickle",
    "resolve_source",
    "unwrap_checkpoint",
]
