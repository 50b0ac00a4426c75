"""Faster R-CNN on COCO as Kedro pipelines, for Ascend NPUs, NVIDIA GPUs and CPUs."""

__version__ = "0.1.0"
