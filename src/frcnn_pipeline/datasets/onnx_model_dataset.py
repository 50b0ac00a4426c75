"""`OnnxModelDataset`: an ONNX graph (`onnx.ModelProto`) as one versioned `.onnx` file, written atomically.

kedro-datasets has no ONNX dataset; the graph is one protobuf, written to a temporary name and renamed, so a
crash never leaves a truncated graph under the real name.
"""

from __future__ import annotations

import onnx
from google.protobuf.message import DecodeError
from kedro.io.core import DatasetError

from frcnn_pipeline.datasets.versioned_fsspec import VersionedFsspecDataset


class OnnxModelDataset(VersionedFsspecDataset[onnx.ModelProto, onnx.ModelProto]):
    """Loads and saves an `onnx.ModelProto` (graphs up to protobuf's 2 GiB: weights inside the file).

    Example::

        export.onnx_model:
          type: frcnn_pipeline.datasets.OnnxModelDataset
          filepath: data/06_models/export/onnx_model.onnx
          versioned: true
    """

    def load(self) -> onnx.ModelProto:
        path = self._load_path_str()
        try:
            return onnx.load_from_string(self._fs.cat_file(path))
        except DecodeError as error:
            raise DatasetError(
                f"{path} is not a readable ONNX graph ({error}): the file is truncated or corrupt. Delete it "
                "and re-run `kedro run --pipeline export`."
            ) from error

    def save(self, data: onnx.ModelProto) -> None:
        if not isinstance(data, onnx.ModelProto):
            raise DatasetError(f"{self._filepath} expects an onnx.ModelProto, got {type(data)}")
        self._write_file_atomically(data.SerializeToString())
