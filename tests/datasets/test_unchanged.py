"""KeepUnchangedDataset: UNCHANGED saves nothing, not even a version; anything else is saved and versioned."""

import inspect
import logging
import pickle

import pandas as pd
import pytest
from kedro.io import AbstractDataset, Version

from frcnn_pipeline.datasets import UNCHANGED, KeepUnchangedDataset

CSV = {"type": "pandas.CSVDataset", "save_args": {"index": False}}


def _dataset(tmp_path, save_version: str | None) -> KeepUnchangedDataset:
    return KeepUnchangedDataset(
        dataset={**CSV, "filepath": str(tmp_path / "table.csv")}, version=Version(None, save_version)
    )


def test_unchanged_writes_no_version_and_the_latest_stays_loadable(tmp_path):
    first = pd.DataFrame({"a": [1, 2]})
    _dataset(tmp_path, "2026-01-01T00.00.00.000Z").save(first)
    _dataset(tmp_path, "2026-01-02T00.00.00.000Z").save(UNCHANGED)
    assert [p.name for p in (tmp_path / "table.csv").iterdir()] == ["2026-01-01T00.00.00.000Z"]
    pd.testing.assert_frame_equal(_dataset(tmp_path, None).load(), first)

    second = pd.DataFrame({"a": [3]})
    _dataset(tmp_path, "2026-01-03T00.00.00.000Z").save(second)
    assert sorted(p.name for p in (tmp_path / "table.csv").iterdir()) == [
        "2026-01-01T00.00.00.000Z",
        "2026-01-03T00.00.00.000Z",
    ]
    pd.testing.assert_frame_equal(_dataset(tmp_path, None).load(), second)


def test_from_catalog_config_versions_pass_through_and_previews_are_the_wrapped_ones(tmp_path):
    config = {
        "type": "frcnn_pipeline.datasets.KeepUnchangedDataset",
        "versioned": True,
        "dataset": {**CSV, "filepath": str(tmp_path / "t.csv")},
        "metadata": {"kedro-viz": {"layer": "reporting"}},
    }
    dataset = AbstractDataset.from_config("t", config, save_version="2026-02-01T00.00.00.000Z")
    dataset.save(pd.DataFrame({"a": [1]}))
    assert (tmp_path / "t.csv" / "2026-02-01T00.00.00.000Z" / "t.csv").is_file()
    assert dataset.metadata == {"kedro-viz": {"layer": "reporting"}}
    # kedro-viz names the preview type after the return annotation of `preview`.
    annotation = inspect.signature(dataset.preview).return_annotation
    assert getattr(annotation, "__name__", str(annotation)) == "TablePreview"
    assert dataset.exists()


def test_versioned_belongs_on_the_wrapper(tmp_path):
    with pytest.raises(ValueError, match=r"put `versioned: true` on the wrapper"):
        KeepUnchangedDataset(dataset={**CSV, "filepath": str(tmp_path / "t.csv"), "versioned": True})


def test_unchanged_is_one_object_even_through_pickle():
    assert pickle.loads(pickle.dumps(UNCHANGED)) is UNCHANGED


def test_unchanged_without_any_saved_version_says_how_to_save_it_again(tmp_path, caplog):
    with caplog.at_level(logging.WARNING, logger="frcnn_pipeline.datasets.unchanged"):
        _dataset(tmp_path, "2026-01-01T00.00.00.000Z").save(UNCHANGED)
    assert not (tmp_path / "table.csv").exists()
    [warning] = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
    assert warning == (
        f"Nothing new to save, but {tmp_path / 'table.csv'} holds no saved version (deleted?): delete "
        "outputs_saved.json in the run's checkpoint folder and run again to save it from the last checkpoint"
    )
