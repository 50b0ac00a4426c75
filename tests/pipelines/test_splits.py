"""The split names pipelines are built for: declared in ingest.splits, checked, `train` apart."""

import pytest

from frcnn_pipeline.pipelines.splits import (
    DEFAULT_EVALUATION_SPLITS,
    evaluation_splits,
    evaluation_splits_of,
    for_split,
    use_evaluation_splits,
)


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


def test_use_evaluation_splits_says_whether_they_changed():
    try:
        assert evaluation_splits() == DEFAULT_EVALUATION_SPLITS
        assert use_evaluation_splits(("val", "test")) is True
        assert evaluation_splits() == ("val", "test")
        assert use_evaluation_splits(("val", "test")) is False
    finally:
        use_evaluation_splits(DEFAULT_EVALUATION_SPLITS)


def test_for_split_binds_the_split_and_keeps_the_name():
    def report(value, *, split):
        return f"{split}:{value}"

    bound = for_split(report, "test")
    assert bound(1) == "test:1" and bound.__name__ == "report"
