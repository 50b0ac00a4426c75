"""SplitsHook: the evaluation splits of this run's config decide the per-split pipelines."""

from types import SimpleNamespace

import pytest

from frcnn_pipeline import hooks
from frcnn_pipeline.pipelines.splits import (
    DEFAULT_EVALUATION_SPLITS,
    evaluation_splits,
    use_evaluation_splits,
)


def context_with(parameters: dict) -> SimpleNamespace:
    return SimpleNamespace(config_loader={"parameters": parameters})


@pytest.fixture
def reconfigured(monkeypatch):
    calls = []
    monkeypatch.setattr(hooks.project.pipelines, "configure", calls.append)
    yield calls
    use_evaluation_splits(DEFAULT_EVALUATION_SPLITS)


def test_the_hook_uses_the_configured_splits_and_rebuilds_pipelines_when_they_change(reconfigured):
    splits = {"train": {}, "val": {}, "test": {"annotation_file": "t.json", "image_dir": "t"}}
    hooks.SplitsHook().after_context_created(context_with({"ingest": {"splits": splits}}))
    assert evaluation_splits() == ("val", "test")
    assert reconfigured == [f"{hooks.project.PACKAGE_NAME}.pipeline_registry"]
    hooks.SplitsHook().after_context_created(context_with({"ingest": {"splits": splits}}))
    assert len(reconfigured) == 1, "the same splits keep the pipelines already built"


def test_a_config_without_ingest_keeps_the_defaults(reconfigured):
    hooks.SplitsHook().after_context_created(context_with({"train": {}}))
    assert evaluation_splits() == DEFAULT_EVALUATION_SPLITS and reconfigured == []


def test_a_bad_split_name_stops_the_run_before_anything_is_built(reconfigured):
    with pytest.raises(ValueError, match="must start with a letter"):
        hooks.SplitsHook().after_context_created(
            context_with({"ingest": {"splits": {"train": {}, "1st": {}}}})
        )
