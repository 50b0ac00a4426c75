"""ONNX Runtime sessions refuse graphs they cannot read, or exported from another model."""

import onnx
import pytest

from frcnn_pipeline.errors import UserFacingError
from frcnn_pipeline.export import read_description
from frcnn_pipeline.export.session import require_exported_from
from frcnn_pipeline.modeling.saved import TRAINED_MODEL, SavedDetector


def test_a_graph_without_this_projects_description_is_refused():
    graph = onnx.helper.make_model(onnx.helper.make_graph([], "empty", [], []))
    with pytest.raises(UserFacingError, match=r"not written by `kedro run --pipeline export`"):
        read_description(graph)


def test_a_graph_exported_from_another_model_file_is_refused():
    description = {"source": {"kind": "trained_model", "version": "v1", "sha256": "aa" * 32}}
    saved = SavedDetector({}, TRAINED_MODEL, origin={"version": "v2", "sha256": "bb" * 32})
    with pytest.raises(
        UserFacingError, match=r"exported from trained_model version v1 .* not from trained_model"
    ):
        require_exported_from(description, saved)
    require_exported_from(description, SavedDetector({}, TRAINED_MODEL, origin={"sha256": "aa" * 32}))
