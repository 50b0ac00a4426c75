"""Kedro datasets of this project (the catalog's `type: frcnn_pipeline.datasets.…`)."""

from frcnn_pipeline.datasets.detector_dataset import DetectorDataset
from frcnn_pipeline.datasets.image_folder_dataset import ImageFolderDataset
from frcnn_pipeline.datasets.onnx_model_dataset import OnnxModelDataset
from frcnn_pipeline.datasets.run_record import RunRecordDataset
from frcnn_pipeline.datasets.unchanged import UNCHANGED, KeepUnchangedDataset

__all__ = [
    "UNCHANGED",
    "DetectorDataset",
    "ImageFolderDataset",
    "KeepUnchangedDataset",
    "OnnxModelDataset",
    "RunRecordDataset",
]
