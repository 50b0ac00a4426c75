"""Project hooks (registered in settings.py)."""

from __future__ import annotations

from kedro.framework import project
from kedro.framework.context import KedroContext
from kedro.framework.hooks import hook_impl

from frcnn_pipeline.pipelines.splits import evaluation_splits_of, use_evaluation_splits


class SplitsHook:
    """Builds the pipelines for the evaluation splits that `ingest.splits` declares in this run's config."""

    @hook_impl
    def after_context_created(self, context: KedroContext) -> None:
        # The raw config with env and --params (`context.params` would build the pipelines to validate them).
        splits = (context.config_loader["parameters"].get("ingest") or {}).get("splits")
        if splits is None:  # a project copy without the ingest parameters keeps the default splits
            return
        if use_evaluation_splits(evaluation_splits_of(splits)):
            # Pipelines built earlier in this process had other splits: rebuild them on next access.
            project.pipelines.configure(f"{project.PACKAGE_NAME}.pipeline_registry")
