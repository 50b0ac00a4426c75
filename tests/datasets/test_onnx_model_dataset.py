"""OnnxModelDataset: versioned ONNX graphs, written atomically; a corrupt file is a clear error."""

import onnx
import pytest
from kedro.io import DatasetError, Version

from frcnn_pipeline.datasets import OnnxModelDataset


def graph(name: str) -> onnx.ModelProto:
    value = onnx.helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [1])
    identity = onnx.helper.make_node("Identity", ["x"], ["y"])
    output = onnx.helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, [1])
    return onnx.helper.make_model(onnx.helper.make_graph([identity], name, [value], [output]))


def test_versions_are_kept_and_the_newest_loads(tmp_path):
    path = tmp_path / "onnx_model.onnx"
    for version, name in (("2025-01-01T00.00.00.000Z", "first"), ("2025-01-02T00.00.00.000Z", "second")):
        OnnxModelDataset(filepath=str(path), version=Version(None, version)).save(graph(name))
    assert OnnxModelDataset(filepath=str(path), version=Version(None, None)).load().graph.name == "second"
    earlier = OnnxModelDataset(filepath=str(path), version=Version("2025-01-01T00.00.00.000Z", None)).load()
    assert earlier.graph.name == "first"
    assert not list(path.rglob("*.partial")), "no temporary file is left behind"


def test_a_corrupt_file_and_a_wrong_object_are_clear_errors(tmp_path):
    path = tmp_path / "broken.onnx"
    path.write_bytes(b"\x08\x07\x12 not protobuf")
    with pytest.raises(DatasetError, match=r"broken\.onnx is not a readable ONNX graph.*--pipeline export"):
        OnnxModelDataset(filepath=str(path)).load()
    with pytest.raises(DatasetError, match=r"expects an onnx\.ModelProto"):
        OnnxModelDataset(filepath=str(tmp_path / "m.onnx")).save(b"bytes")
