"""The weights pipeline: fetch pretrained weights and convert them into the model's state dict."""

from .pipeline import create_pipeline

__all__ = ["create_pipeline"]
