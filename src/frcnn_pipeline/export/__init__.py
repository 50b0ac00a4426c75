"""Layer 2½: the detector as deployable ONNX graphs, and ONNX Runtime running them (Kedro-free).

`export_detector` turns a `SavedDetector` into a dynamic graph (any image size, preprocessing inside) and a
fixed-shape graph (a padded canvas in, padded detections and their count out), each with its description
(inputs, outputs, preprocessing, classes) in its metadata; `OnnxDetector` runs either on an RGB image.
"""

from frcnn_pipeline.export.deployment import DYNAMIC, FIXED, default_canvas
from frcnn_pipeline.export.onnx_export import ExportedDetector, UnexportableOpError, export_detector
from frcnn_pipeline.export.session import OnnxDetector, read_description

__all__ = [
    "DYNAMIC",
    "FIXED",
    "ExportedDetector",
    "OnnxDetector",
    "UnexportableOpError",
    "default_canvas",
    "export_detector",
    "read_description",
]
