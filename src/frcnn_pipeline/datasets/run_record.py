"""`RunRecordDataset`: the train node's run record (`training_run`), the one that may claim its outputs saved.

Kedro calls `confirm()` on the datasets a node `confirms` once every output of that node is saved, and not
when a save fails. The train node confirms its record: `confirm()` then writes into the run's checkpoint
folder that the outputs of its last checkpoint are saved (engine/checkpoint.py `mark_outputs_saved`). A rerun
with nothing left to train saves nothing only when that folder says so; otherwise (a save failed on a full
disk, or was killed) it saves every output again from the checkpoint, without training again.

    training_run:
      type: frcnn_pipeline.datasets.RunRecordDataset
      versioned: true
      dataset:
        type: json.JSONDataset
        filepath: data/08_reporting/train/training_run.json
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from frcnn_pipeline.console.detail import DETAIL
from frcnn_pipeline.datasets.unchanged import UNCHANGED, KeepUnchangedDataset
from frcnn_pipeline.engine.checkpoint import mark_outputs_saved

log = logging.getLogger(__name__)


class RunRecordDataset(KeepUnchangedDataset):
    """A `KeepUnchangedDataset` of the run record; `confirm()` marks its checkpoint's outputs saved."""

    # The record this dataset saved in this session (None: none, or UNCHANGED: the mark is already there).
    _saved_record: dict[str, Any] | None = None

    def save(self, data: Any) -> None:
        super().save(data)
        self._saved_record = None if data is UNCHANGED else data

    def confirm(self) -> None:
        checkpoint = (self._saved_record or {}).get("last_checkpoint")
        if checkpoint is None:
            return
        mark_outputs_saved(Path(checkpoint))
        log.info(
            "Every output of %s is saved: a rerun of this run has nothing to redo", checkpoint, extra=DETAIL
        )
