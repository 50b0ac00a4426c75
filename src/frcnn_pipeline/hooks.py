"""Project hooks (registered in settings.py)."""

from __future__ import annotations

import logging
from typing import Any

from kedro.framework.hooks import hook_impl
from kedro.framework.project import pipelines as registry
from kedro.io import DataCatalog, MemoryDataset
from kedro.pipeline import Node, Pipeline

from frcnn_pipeline.errors import UserFacingError

log = logging.getLogger(__name__)


class MissingInputError(UserFacingError, FileNotFoundError):
    """A pipeline needs a dataset that another pipeline has not written yet."""


def _producer(name: str) -> str | None:
    """The registered pipeline that writes `name` (the smallest, when several chain it)."""
    registry.set_requested(None)
    makers = [(len(p.nodes), key) for key, p in registry.items() if name in p.all_outputs()]
    return min(makers)[1] if makers else None


class MissingInputsHook:
    """Before any node runs, every stored input of the pipeline must exist; else say which pipeline writes it.

    Without this, `kedro run --pipeline weights` on a fresh clone ends in Kedro's raw load error about
    `categories.parquet`.
    """

    @hook_impl
    def before_pipeline_run(
        self, run_params: dict[str, Any], pipeline: Pipeline, catalog: DataCatalog
    ) -> None:
        missing: dict[str | None, list[str]] = {}
        for name in sorted(pipeline.inputs()):
            if name.startswith("params:") or name == "parameters":
                continue
            dataset = catalog.get(name)
            if dataset is None or isinstance(dataset, MemoryDataset) or catalog.exists(name):
                continue
            missing.setdefault(_producer(name), []).append(name)
        if not missing:
            return
        steps = [
            f"`kedro run --pipeline {maker}` (writes {', '.join(names)})"
            if maker
            else f"{', '.join(names)} (no pipeline writes them: check the catalog)"
            for maker, names in missing.items()
        ]
        raise MissingInputError(
            f"This pipeline's inputs do not exist yet. Run first: {'; then '.join(steps)}."
        )


class ReportOnFailureHook:
    """A node that fails with a report attached to its error still saves that report.

    The weights conversion report lists the keys a checkpoint left unloaded: the very file the error tells
    the user to read.
    """

    @hook_impl
    def on_node_error(self, error: Exception, node: Node, catalog: DataCatalog) -> None:
        report = getattr(error, "report", None)
        targets = [name for name in node.outputs if name.endswith("_report")]
        if report is not None and len(targets) == 1:
            catalog.save(targets[0], report)
            log.info("Saved %s despite the failure of node %s", targets[0], node.name)
