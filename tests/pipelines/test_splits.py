"""The split names pipelines are built for: declared in ingest.splits, checked, `train` apart; with the
inference backend they make the pipelines' shape."""

import pytest

from frcnn_pipeline.config import IngestParams, RuntimeParams
from frcnn_pipeline.pipelines.shape import DEFAULT_SHAPE, PipelineShape
from frcnn_pipeline.pipelines.splits import DEFAULT_EVALUATION_SPLITS, evaluation_splits_of, for_split


def test_evaluation_splits_are_every_declared_split_but_train_in_order():
    assert evaluation_splits_of({"train": {}, "val": {}, "test": {}}) == ("val", "test")
    assert evaluation_splits_of({"train": {}, "val": None, "test": {}}) == ("test",)  # null switches one off


def test_bad_declarations_are_clear_errors():
    with pytest.raises(ValueError, match=r"split name\(s\) \['my-test'\] must start with a letter"):
        evaluation_splits_of({"train": {}, "my-test": {}})
    with pytest.raises(ValueError, match=r"split name\(s\) \['a.b'\]"):
        evaluation_splits_of({"train": {}, "a.b": {}})
    with pytest.raises(ValueError, match="no `train` split"):
        evaluation_splits_of({"val": {}})
    with pytest.raises(ValueError, match="no evaluation split"):
        evaluation_splits_of({"train": {}, "val": None})


def test_the_shape_is_the_declared_evaluation_splits_and_the_backend():
    test = {"annotation_file": "t.json", "image_dir": "t"}
    ingest = IngestParams.parse({"splits": {"test": test}}, "ingest")
    shape = PipelineShape.of(ingest, RuntimeParams(inference_backend="onnxruntime"))
    assert shape == PipelineShape(("val", "test"), "onnxruntime")
    assert shape.first_evaluation_split == "val"
    assert PipelineShape.of(IngestParams(), RuntimeParams()) == DEFAULT_SHAPE
    assert DEFAULT_SHAPE.evaluation_splits == DEFAULT_EVALUATION_SPLITS


def test_for_split_binds_the_split_and_keeps_the_name():
    def report(value, *, split):
        return f"{split}:{value}"

    bound = for_split(report, "test")
    assert bound(1) == "test:1" and bound.__name__ == "report"
