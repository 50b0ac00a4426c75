"""RunRecordDataset: `confirm()` (after every output of the train node is saved) marks the outputs of the
record's checkpoint saved; a record not saved in this session, or UNCHANGED, marks nothing."""

import json

from kedro.io import AbstractDataset

from frcnn_pipeline.datasets import UNCHANGED, RunRecordDataset
from frcnn_pipeline.engine.checkpoint import OUTPUTS_SAVED, CheckpointManager, outputs_saved


def _record_dataset(tmp_path, save_version: str | None = None) -> RunRecordDataset:
    config = {
        "type": "frcnn_pipeline.datasets.RunRecordDataset",
        "versioned": True,
        "dataset": {"type": "json.JSONDataset", "filepath": str(tmp_path / "training_run.json")},
    }
    return AbstractDataset.from_config("training_run", config, save_version=save_version)


def test_confirm_marks_the_saved_records_checkpoint(tmp_path):
    checkpoint = CheckpointManager(tmp_path / "checkpoints" / "demo").save(4, {"iteration": 4})
    record = {"run_name": "demo", "iterations": 4, "last_checkpoint": str(checkpoint)}
    dataset = _record_dataset(tmp_path, "2026-01-01T00.00.00.000Z")
    dataset.save(record)
    assert not outputs_saved(checkpoint), "saved, not yet confirmed: other outputs may still fail"
    dataset.confirm()
    assert outputs_saved(checkpoint)
    assert json.loads((checkpoint.parent / OUTPUTS_SAVED).read_text())["checkpoint"] == "model_0000004.pth"
    assert _record_dataset(tmp_path).load() == record


def test_nothing_saved_or_unchanged_confirms_nothing(tmp_path):
    checkpoint = CheckpointManager(tmp_path / "checkpoints" / "demo").save(4, {"iteration": 4})
    _record_dataset(tmp_path, "2026-01-01T00.00.00.000Z").confirm()
    unchanged = _record_dataset(tmp_path, "2026-01-02T00.00.00.000Z")
    unchanged.save(UNCHANGED)
    unchanged.confirm()
    assert not outputs_saved(checkpoint) and not (tmp_path / "training_run.json").exists()
