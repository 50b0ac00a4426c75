"""Project hooks (registered in settings.py): before any node runs, the parameters are validated into the
run's configuration (which hands every node its typed sections and the world), the pipelines are built for the
run's shape, a pipeline that trains decides once where the training starts, and the pipeline's stored inputs
must exist; in a multi-node run only the job's main process writes the catalog's outputs; a failing node still
saves the report its error carries."""

from __future__ import annotations

import logging
import re
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml
from kedro.framework import project
from kedro.framework.hooks import hook_impl
from kedro.io import DataCatalog, MemoryDataset
from kedro.pipeline import Node, Pipeline

from frcnn_pipeline.config import ParameterError
from frcnn_pipeline.data.fingerprint import tables_fingerprint
from frcnn_pipeline.engine.resume import ResumeDecision, decide_resume
from frcnn_pipeline.errors import UserFacingError
from frcnn_pipeline.framework.run_config import PARAMS_PREFIX, RunConfig
from frcnn_pipeline.pipeline_registry import build_pipeline, build_pipelines
from frcnn_pipeline.pipelines.run_inputs import RUN_RESUME, RUN_WORLD
from frcnn_pipeline.runtime.world import WorldConfig

if TYPE_CHECKING:
    from kedro.framework.context import KedroContext

log = logging.getLogger(__name__)

REFERENCE = "docs/parameters.md"
_CONFIG_SUFFIXES = {".yml", ".yaml", ".json"}
TRAIN_IMAGES, TRAIN_ANNOTATIONS = "train_images", "train_annotations"
# Pipelines that write shared files (the demo dataset, the download cache): one machine runs them.
SINGLE_MACHINE_TAGS = frozenset({"ingest", "weights"})


class RunConfigHook:
    """Validates the run's parameters once into its `RunConfig`, and decides with it what the run is.

    A run whose parameters have an unknown key or a wrong type stops, naming each key and its file. The
    registry's pipelines are rebuilt in the run's shape (evaluation splits, inference backend), every
    node gets its `params:<section>` inputs as the validated, typed sections, and the catalog holds the
    run's decisions that nodes take as inputs (pipelines/run_inputs.py): the world, and for a pipeline that
    trains its `ResumeDecision`, which the MLflow hook reads too.
    """

    def __init__(self) -> None:
        self._run_config: RunConfig | None = None
        self._resume: ResumeDecision | None = None

    @property
    def run_config(self) -> RunConfig:
        """This run's configuration.

        Raises:
            RuntimeError: no session's context was created yet.
        """
        if self._run_config is None:
            raise RuntimeError("No run configuration yet: it is built when a session's context is created")
        return self._run_config

    @hook_impl(tryfirst=True)  # before any plugin's hook does work with the parameters
    def after_context_created(self, context: KedroContext) -> None:
        # The config with env and --params (`context.params` would build the pipelines to validate them).
        self._run_config = run_config_of(context)
        # Every pipeline this session loads (all, or those it asked for), in this run's shape: an earlier
        # session of this process may have left them in another.
        for name in list(project.pipelines):
            project.pipelines[name] = build_pipeline(name, self._run_config.shape)

    @property
    def resume_decision(self) -> ResumeDecision | None:
        """Where this pipeline run's training starts (None: the pipeline does not train)."""
        return self._resume

    @hook_impl
    def after_catalog_created(self, catalog: DataCatalog) -> None:
        """The run's world as the catalog's `run_world`, for the nodes that spawn workers."""
        catalog[RUN_WORLD] = MemoryDataset(self.run_config.world, copy_mode="assign")

    @hook_impl(tryfirst=True)  # before the MLflow hook, which continues the run the decision resumes
    def before_pipeline_run(self, pipeline: Pipeline, catalog: DataCatalog) -> None:
        """A pipeline that trains decides once where the training starts, as the catalog's `run_resume`."""
        self._resume = None
        if RUN_RESUME not in pipeline.inputs():
            return
        config = self.run_config
        self._resume = decide_resume(
            config.train,
            config.model,
            world_size=config.world.world_size,
            data_fingerprint=_stored_train_data_fingerprint(pipeline, catalog),
        )
        catalog[RUN_RESUME] = MemoryDataset(self._resume, copy_mode="assign")

    @hook_impl
    def before_node_run(self, node: Node) -> dict[str, Any]:
        """The node's `params:` inputs as the run configuration's typed sections (Kedro loads dicts)."""
        return {
            name: self.run_config.parameter(name) for name in node.inputs if name.startswith(PARAMS_PREFIX)
        }


def _stored_train_data_fingerprint(pipeline: Pipeline, catalog: DataCatalog) -> str | None:
    """The train tables' fingerprint when the pipeline reads them as stored (None: this run writes them, or
    they do not exist yet, which `MissingInputsHook` reports)."""
    tables = (TRAIN_IMAGES, TRAIN_ANNOTATIONS)
    if not set(tables) <= pipeline.inputs() or not all(catalog.exists(name) for name in tables):
        return None
    return tables_fingerprint(*(catalog.load(name) for name in tables))


def run_config_of(context: KedroContext) -> RunConfig:
    """The run configuration of the context's parameters.

    Raises:
        ParameterError: one line per problem, each naming the key and the file (or --params) that sets it.
    """
    loader = context.config_loader
    try:
        return RunConfig.from_parameters(loader["parameters"])
    except ParameterError as error:
        env = loader.env or loader.default_run_env
        conf = Path(loader.conf_source)
        folders = [conf / name for name in dict.fromkeys([loader.base_env, env])]
        problems = [
            _with_sources(line, folders, loader.runtime_params or {}, context.project_path)
            for line in error.problems
        ]
        raise ParameterError(
            problems,
            heading=f"Invalid parameters (env {env!r}); fix them where named:",
            footer=f"Every parameter, what it accepts and its default: {REFERENCE}",
        ) from None


def _with_sources(problem: str, folders: list[Path], runtime_params: Mapping[str, Any], root: Path) -> str:
    """The problem with where its key is set: --params, else the env's file, else base's (what won)."""
    key = problem.split(":", 1)[0]
    parts = re.sub(r"\[\d+\]", "", key).split(".")
    source = "--params" if _holds(runtime_params, parts) else None
    for folder in reversed(folders):  # the run env's folder before base
        source = source or next((path for path in _parameter_files(folder) if _sets(path, parts)), None)
    if isinstance(source, Path) and source.is_relative_to(root):
        source = source.relative_to(root)
    return f"{problem} [{source}]" if source is not None else problem


def _parameter_files(folder: Path) -> list[Path]:
    """The files Kedro reads parameters from (parameters*, parameters*/**, **/parameters*)."""
    return [
        path
        for path in sorted(folder.rglob("*"))
        if path.suffix in _CONFIG_SUFFIXES
        and any(part.startswith("parameters") for part in path.relative_to(folder).parts)
    ]


def _sets(path: Path, parts: list[str]) -> bool:
    content = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    recipes = content.get("_recipes") if isinstance(content, dict) else None
    return any(
        _holds(block, parts) for block in [content, *(recipes.values() if isinstance(recipes, dict) else [])]
    )


def _holds(mapping: Any, parts: list[str]) -> bool:
    for part in parts:
        if not isinstance(mapping, Mapping) or part not in mapping:
            return False
        mapping = mapping[part]
    return True


class MissingInputError(UserFacingError, FileNotFoundError):
    """A pipeline needs a dataset that another pipeline has not written yet."""


def _producer(name: str, pipelines: Mapping[str, Pipeline]) -> str | None:
    """The pipeline that writes `name` (the smallest, when several chain it)."""
    makers = [(len(p.nodes), key) for key, p in pipelines.items() if name in p.all_outputs()]
    return min(makers)[1] if makers else None


def _stored_and_absent(name: str, catalog: DataCatalog) -> bool:
    if name.startswith(PARAMS_PREFIX) or name == "parameters":
        return False
    dataset = catalog.get(name)
    return dataset is not None and not isinstance(dataset, MemoryDataset) and not catalog.exists(name)


class MissingInputsHook:
    """Before any node runs, every stored input of the pipeline must exist; else say which pipeline writes it.

    Without this, `kedro run --pipeline weights` on a fresh clone ends in Kedro's raw load error about
    `categories.parquet`.
    """

    def __init__(self, run_configs: RunConfigHook) -> None:
        self._run_configs = run_configs

    @hook_impl
    def before_pipeline_run(
        self, run_params: dict[str, Any], pipeline: Pipeline, catalog: DataCatalog
    ) -> None:
        absent = [name for name in sorted(pipeline.inputs()) if _stored_and_absent(name, catalog)]
        if not absent:
            return
        every_pipeline = build_pipelines(self._run_configs.run_config.shape)
        missing: dict[str | None, list[str]] = {}
        for name in absent:
            missing.setdefault(_producer(name, every_pipeline), []).append(name)
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


class NotTheMainProcessError(UserFacingError, RuntimeError):
    """A pipeline that must run on one machine was started on a process other than the job's main one."""


class _OutputMemoryDataset(MemoryDataset):
    """A run output held in memory; a node that `confirms` it has nothing to confirm here."""

    def confirm(self) -> None:
        """Nothing: the main process confirms what it saved (the train run record, datasets/run_record.py)."""


class MainProcessSavesHooks:
    """Outputs of a run in memory only, on every process of a multi-node job but the main one.

    Every node runs the same pipeline, and its distributed nodes (train, evaluate's and predict's inference)
    return rank 0's results in every process. Kedro saves every node output, and a `before_dataset_saved`
    hook cannot skip a save, so on the other processes the run's outputs are swapped for MemoryDatasets
    before it starts (public `DataCatalog.__setitem__`): their nodes compute the same values, hand them on
    in memory and write nothing into the project's data folders. Inputs still load from the shared folders.
    The single-machine pipelines (ingest, weights) are refused there.
    """

    def __init__(self, run_configs: RunConfigHook) -> None:
        self._run_configs = run_configs

    @hook_impl
    def before_pipeline_run(
        self, run_params: dict[str, Any], pipeline: Pipeline, catalog: DataCatalog
    ) -> None:
        world = self._run_configs.run_config.world
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
                catalog[name] = _OutputMemoryDataset()
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
def _quiet_replacements() -> Iterator[None]:
    """The catalog warns about every dataset it replaces; here that is the point, said once above."""
    catalog_log = logging.getLogger("kedro.io.data_catalog")

    def not_a_replacement(record: logging.LogRecord) -> bool:
        return not record.getMessage().startswith("Replacing dataset")

    catalog_log.addFilter(not_a_replacement)
    try:
        yield
    finally:
        catalog_log.removeFilter(not_a_replacement)
