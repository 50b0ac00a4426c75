"""Project hooks (registered in settings.py)."""

from __future__ import annotations

from typing import Any

from kedro.framework.hooks import hook_impl
from kedro.framework.project import pipelines as registry
from kedro.io import DataCatalog, MemoryDataset
from kedro.pipeline import Pipeline

from frcnn_pipeline.errors import UserFacingError


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
