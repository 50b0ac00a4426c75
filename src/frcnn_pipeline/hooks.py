"""Kedro hooks: in a multi-node run, only the job's main process writes the catalog's outputs.

Every node runs the same pipeline, and its distributed nodes (train, evaluate's and predict's inference)
return rank 0's results in every process. Kedro saves every node output, and a `before_dataset_saved` hook
cannot skip a save, so on the other processes the run's outputs are swapped for MemoryDatasets before it
starts (public `DataCatalog.__setitem__`): their nodes compute the same values, hand them on in memory and
write nothing into the project's data folders. Inputs still load from the shared folders. The single-machine
pipelines (ingest, weights) are refused there: they write shared files (the demo dataset, the download cache).
"""

from __future__ import annotations

import logging
from contextlib import contextmanager
from typing import Any

from kedro.framework.hooks import hook_impl
from kedro.io import MemoryDataset
from kedro.pipeline import Pipeline

from frcnn_pipeline.engine.launcher import WorldConfig

log = logging.getLogger(__name__)

SINGLE_MACHINE_TAGS = frozenset({"ingest", "weights"})


class NotTheMainProcessError(RuntimeError):
    """A pipeline that must run on one machine was started on a process other than the job's main one."""


class MainProcessSavesHooks:
    """Outputs of a run in memory only, on every process of a multi-node job but the main one."""

    @hook_impl
    def before_pipeline_run(self, run_params: dict[str, Any], pipeline: Pipeline, catalog) -> None:
        if "params:runtime" not in catalog:
            return
        world = WorldConfig.from_runtime(catalog.load("params:runtime"))
        if world.is_main_process:
            if world.num_nodes > 1 or world.launcher != "none":
                log.info("World: %s; this process saves the outputs", world.summary())
            return
        role = _role(world)
        single_machine = sorted(node.name for node in pipeline.nodes if node.tags & SINGLE_MACHINE_TAGS)
        if single_machine:
            raise NotTheMainProcessError(
                f"This process is {role}: it takes part in training and evaluation only, but the run "
                f"includes {single_machine}. Run `kedro run --pipeline ingest` and `--pipeline weights` "
                "once, on one machine (single node), then `--pipeline train` (and evaluate) on every node."
            )
        with _quiet_replacements():
            for name in sorted(pipeline.all_outputs()):
                catalog[name] = MemoryDataset()
        log.info(
            "This process is %s: the outputs of this run (%s) stay in memory here; the main process saves",
            role,
            ", ".join(sorted(pipeline.all_outputs())),
        )


def _role(world: WorldConfig) -> str:
    if world.launcher == "torchrun":
        return f"rank {world.process_rank} of {world.world_size} (torchrun)"
    launcher = "" if world.launcher == "none" else f" ({world.launcher})"
    return f"node {world.node_rank} of {world.num_nodes}{launcher}"


@contextmanager
def _quiet_replacements():
    """The catalog warns about every dataset it replaces; here that is the point, said once above."""
    catalog_log = logging.getLogger("kedro.io.data_catalog")

    def not_a_replacement(record: logging.LogRecord) -> bool:
        return not record.getMessage().startswith("Replacing dataset")

    catalog_log.addFilter(not_a_replacement)
    try:
        yield
    finally:
        catalog_log.removeFilter(not_a_replacement)
