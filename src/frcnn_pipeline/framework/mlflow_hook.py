"""Experiment tracking: kedro-mlflow's hook, and what a run of this project records in MLflow (settings.py
registers it).

kedro-mlflow opens one MLflow run per `kedro run` and closes it at the end. This subclass adds:

- a run that trains is named after `train.run_name` and, when it resumes a training, continues the MLflow
  run whose id the checkpoint holds, as the run's resume decision says (engine/resume.py: the training reads
  the same decision, so the two cannot disagree). A parameter changed on resume, e.g. a raised `max_iter`, is
  kept as MLflow logged it first and the new value goes to a `changed_on_resume.<name>` tag, as MLflow
  refuses to change a logged parameter;
- every resolved parameter (defaults from the schema included), flattened (`train.solver.base_lr`), the Kedro
  env, the git commit and whether the tree was dirty, the versions of torch, torchvision, kedro... (and
  torch_npu/apex when installed);
- the data: each split's fingerprint and the validation summary;
- each model a pipeline loads (initial weights, trained or best model): its file's sha256 and version, and
  the MLflow run of the training that made it (so `kedro run --pipeline evaluate` names its training);
- each saved dataset whose catalog entry has `metadata: mlflow: artifact_path: <folder>` as an artefact
  (`log_metrics: true` also logs its numbers as metrics `<dataset>/<key>`, `log_metrics: <key>` the numbers
  under that key);
- on nodes other than node 0 of a multi-node run, nothing: node 0 tracks the run.

Which MLflow run a training continues follows its resume decision (mlflow_resume.py); what a run records, in
mlflow_record.py.

The training workers log their live metrics themselves (engine/tracking.py).

Only kedro-mlflow's public hook methods and config, and MLflow's public API, are used: the state that
decides what to do (whether this session tracks, whether a run was open before it) is this hook's own.

The store is checked before anything runs (frcnn_pipeline.framework.mlflow_store): one that cannot be used
stops a run that tracks with a few lines naming it and the fix, and lets a run with tracking switched off go
on. A store that fails mid-run costs a warning and the rest of that run's tracking, never the run: its outputs
are saved as usual. A store copied or moved with the project has its artifact locations moved into this
project.
"""

from __future__ import annotations

import logging
import warnings
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any

import mlflow
from kedro.framework.hooks import hook_impl
from mlflow import MlflowClient
from mlflow.entities import RunStatus
from omegaconf import OmegaConf

from frcnn_pipeline.config import SECTIONS, Section, flatten
from frcnn_pipeline.console.detail import DETAIL
from frcnn_pipeline.datasets import UNCHANGED
from frcnn_pipeline.engine.resume import ResumeDecision
from frcnn_pipeline.engine.tracking import quiet_store_errors
from frcnn_pipeline.framework.config_loader import resolver_deprecation_silenced
from frcnn_pipeline.framework.hooks import RunConfigHook
from frcnn_pipeline.framework.mlflow_record import (
    DATA_RECORD,
    RunParams,
    record_data,
    record_model,
    record_saved,
    run_tags,
)
from frcnn_pipeline.framework.mlflow_resume import run_to_continue
from frcnn_pipeline.framework.mlflow_store import (
    MLFLOW_ERRORS,
    STORE_ERRORS,
    TrackingStoreError,
    check_sqlite_store,
    configured_store,
    repoint_moved_project,
    store_error,
    use_a_private_store,
)
from frcnn_pipeline.modeling.saved import SavedDetector

# kedro-mlflow's pipeline model (unused here) makes mlflow warn about its type hints on import, under a
# "once" filter of mlflow's own that no filter of ours can precede: the warning is recorded and dropped.
with warnings.catch_warnings(record=True):
    from kedro_mlflow.framework.hooks.mlflow_hook import MlflowHook

log = logging.getLogger(__name__)


def _is_param(input_name: str) -> bool:
    """A node input that Kedro fills from the parameters (kedro-mlflow's test for what it logs)."""
    return input_name.startswith("params:") or input_name == "parameters"


class ProjectMlflowHook(MlflowHook):
    """kedro-mlflow's `MlflowHook` with this project's run record (see the module docstring)."""

    def __init__(self, run_config: RunConfigHook):
        super().__init__()
        self._run_config = run_config  # this run's decisions (the world, the validated sections)
        self._params: dict[str, Any] = {}
        self._env: str | None = None
        self._project_path = Path.cwd()
        self._catalog = None
        self._client: MlflowClient | None = None  # the store kedro-mlflow set up
        self._run_params = RunParams()
        # A run was open before the session started: kedro-mlflow logs into it and leaves it open.
        self._run_was_active = False
        # This session's pipeline tracks (kedro-mlflow opened or joined a run for it).
        self._tracks = True
        # The configured store cannot be used: raised before a run that tracks (None: it can).
        self._store_error: TrackingStoreError | None = None
        self._store_uri = ""
        self._tracking_failed = False  # the store failed mid-run: the run goes on untracked

    @hook_impl
    def after_context_created(self, context) -> None:
        self._project_path = Path(context.project_path)
        # conf/base/mlflow.yml places the local store inside the project, wherever kedro is started from.
        with resolver_deprecation_silenced():
            OmegaConf.register_new_resolver("project_path", self._project_path.as_posix, replace=True)
        self._store_error, self._tracking_failed = None, False
        self._store_uri = configured_store(context)
        self._run_was_active = mlflow.active_run() is not None
        is_main = self._run_config.run_config.world.is_main_process
        if is_main:
            try:
                check_sqlite_store(self._store_uri)
            except TrackingStoreError as error:
                self._store_error = error
        if self._store_error is not None or not is_main:
            use_a_private_store(context)  # opened by kedro-mlflow whether the pipeline tracks or not
        try:
            with quiet_store_errors(), resolver_deprecation_silenced():
                super().after_context_created(context)
        except STORE_ERRORS as error:  # a store other than SQLite, or one that failed after the check
            self._store_error = store_error(self._store_uri or "(kedro-mlflow's default)", error)
            use_a_private_store(context)
            with resolver_deprecation_silenced():
                super().after_context_created(context)
        server = self.mlflow_config.server
        self._client = MlflowClient(server.mlflow_tracking_uri, server.mlflow_registry_uri)
        self._params = context.params
        self._env = context.env
        if self._store_error is not None:
            if self._store_uri:  # what `kedro mlflow ui` opens; this process tracks nothing
                server.mlflow_tracking_uri = self._store_uri
            return
        self._store_uri = server.mlflow_tracking_uri
        log.info("MLflow tracking store: %s", self._store_uri, extra=DETAIL)
        if is_main and not self._run_was_active:
            self._keep_artifacts_in_project()

    def _keep_artifacts_in_project(self) -> None:
        """A store copied or moved with the project points into the old folder: repointed, with a warning.

        kedro-mlflow starts runs by the experiment's id, which stays; the store gives each new run the
        experiment's (repointed) artifact location.
        """
        experiment = self.mlflow_config.tracking.experiment
        stored = self._client.get_experiment_by_name(experiment.name)
        if stored is not None:
            configured = experiment.create_experiment_kwargs.artifact_location
            repoint_moved_project(self._store_uri, stored.artifact_location, configured, self._project_path)

    @hook_impl
    def after_catalog_created(  # noqa: PLR0917 (Kedro's hook signature)
        self, catalog, conf_catalog, conf_creds, parameters, save_version, load_versions
    ) -> None:
        super().after_catalog_created(
            catalog=catalog,
            conf_catalog=conf_catalog,
            conf_creds=conf_creds,
            parameters=parameters,
            save_version=save_version,
            load_versions=load_versions,
        )
        self._catalog = catalog

    @hook_impl
    def before_pipeline_run(self, run_params: dict[str, Any], pipeline, catalog) -> None:
        names = run_params.get("pipeline_names") or [run_params.get("pipeline_name") or "__default__"]
        world = self._run_config.run_config.world
        # One hook object serves every session of a process; kedro-mlflow sets run_id only when it tracks, and
        # a stale id would make an untracked session re-enter an earlier session's run.
        self.run_id = None
        self._run_params = RunParams(
            self.mlflow_config.tracking.params.long_params_strategy, self.sanitize_param_name
        )
        self._tracking_failed = False
        disabled = self.mlflow_config.tracking.disable_tracking.pipelines
        if self._store_error is not None:
            if not all(name in disabled for name in names):
                raise self._store_error
            log.info("This pipeline does not track, which is as well: %s", self._store_error)
        if not world.is_main_process:
            log.info("%s: the main process tracks the run in MLflow", world.summary())
            self.mlflow_config.tracking.disable_tracking.pipelines = [*names]
        try:
            with quiet_store_errors():
                decision = self._run_config.resume_decision  # None: this pipeline does not train
                if world.is_main_process and decision is not None and not self._run_was_active:
                    self._continue_training_run(decision)
                super().before_pipeline_run(run_params=run_params, pipeline=pipeline, catalog=catalog)
                self._tracks = self.run_id is not None
                if self._tracks:
                    self._record_run(pipeline, catalog)
        except MLFLOW_ERRORS as error:  # the store failed since the check at start-up
            raise store_error(self._store_uri, error) from error

    @hook_impl
    def before_node_run(self, node, catalog, inputs: dict[str, Any], is_async: bool) -> None:
        # kedro-mlflow re-enters the run (a node may run on another thread) and logs the node's raw `params:`
        # inputs: it gets the other inputs, and the parameters are logged here, each once (RunParams).
        params = {
            name.removeprefix("params:"): value.model_dump() if isinstance(value, Section) else value
            for name, value in inputs.items()
            if _is_param(name)
        }
        others = {name: value for name, value in inputs.items() if not _is_param(name)}
        reenter = partial(
            super().before_node_run, node=node, catalog=catalog, inputs=others, is_async=is_async
        )
        self._tolerate(f"log the parameters of node {node.name}", reenter)
        if params and self._tracking():
            log_params = partial(self._run_params.log, flatten(params))
            self._tolerate(f"log the parameters of node {node.name}", log_params)

    @hook_impl
    def after_pipeline_run(self, run_params: dict[str, Any], pipeline, catalog) -> None:
        # Tried even after a failure mid-run: the store may answer again, and the run should not stay open.
        end = partial(super().after_pipeline_run, run_params=run_params, pipeline=pipeline, catalog=catalog)
        self._tolerate("end the run", end, after_failure=True)
        # kedro-mlflow re-enters the run before each node and ends it once: with MLflow 3 the run stays on
        # this thread's stack, and a second session in one process (a notebook, a test) would log into it.
        # mlflow.end_run takes the run off the stack before it tells the store.
        if self._tracks and not self._run_was_active:
            while (active := mlflow.active_run()) is not None and active.info.run_id == self.run_id:
                self._tolerate("end the run", mlflow.end_run, after_failure=True)

    @hook_impl
    def on_pipeline_error(self, error: Exception, run_params: dict[str, Any], pipeline, catalog) -> None:
        """The run ends as FAILED (kedro-mlflow's own handler, done here to say it once per run)."""
        if not self._tracks:
            return
        if self._run_was_active:
            log.warning("MLflow run %s was open before the session started: it stays open", self.run_id)
            return
        if self._tracking_failed and mlflow.active_run() is None:
            return  # the run was not reopened after the store failed
        self._tolerate("mark the run as failed", self._end_failed_run, after_failure=True)

    def _end_failed_run(self) -> None:
        """kedro-mlflow re-enters the run before each node: this thread holds it once per entry. A run another
        thread holds is ended through the store."""
        failed = RunStatus.to_string(RunStatus.FAILED)
        closed: set[str] = set()
        while (active := mlflow.active_run()) is not None:
            mlflow.end_run(failed)
            if active.info.run_id not in closed:
                log.info("The run '%s' was closed because of an error in the pipeline.", active.info.run_id)
            closed.add(active.info.run_id)
        if self.run_id is not None and self.run_id not in closed:
            self._client.set_terminated(self.run_id, failed)
            log.info("The parent run '%s' was closed because of an error in the pipeline.", self.run_id)

    def _tolerate(self, what: str, call: Callable[[], Any], *, after_failure: bool = False) -> None:
        """A tracking call of this process. A store that fails mid-run costs one warning and the rest of this
        run's tracking (but its end), never the run: its outputs are on disk either way."""
        if self._tracking_failed and not after_failure:
            return
        try:
            with quiet_store_errors():
                call()
        except STORE_ERRORS as error:
            if not self._tracking_failed:
                log.warning(
                    "MLflow: could not %s (run %s at %s: %s: %s); the run goes on untracked and saves its "
                    "outputs as usual",
                    what,
                    self.run_id,
                    self._store_uri,
                    type(error).__name__,
                    (str(error).strip().splitlines() or [""])[0],
                )
            self._tracking_failed = True

    def _continue_training_run(self, decision: ResumeDecision) -> None:
        """Name the run after the training; reuse the MLflow run of the checkpoint this training resumes."""
        train = self._run_config.run_config.train
        run = self.mlflow_config.tracking.run
        run.name = run.name or train.run_name
        if run.id is not None:
            return
        previous = run_to_continue(decision, train.run_name, self._client)
        if previous is not None:
            run.id = previous.info.run_id
            self._run_params.resumed = dict(previous.data.params)
            log.info("Resuming train.run_name %r: continuing MLflow run %s", train.run_name, run.id)

    def _record_run(self, pipeline, catalog) -> None:
        mlflow.set_tags(run_tags(self._project_path, self._env))
        sections = self._run_config.run_config
        resolved = {name: getattr(sections, name).model_dump() for name in SECTIONS if name in self._params}
        self._run_params.log(flatten(resolved))
        if DATA_RECORD not in pipeline.all_outputs() and catalog.exists(DATA_RECORD):
            record_data(catalog.load(DATA_RECORD), self._run_params)

    @hook_impl
    def after_dataset_loaded(self, dataset_name: str, data: Any, node) -> None:
        if isinstance(data, SavedDetector) and self._tracking():
            record = partial(record_model, dataset_name, data, self._run_params)
            self._tolerate(f"record {dataset_name}", record)

    @hook_impl
    def after_dataset_saved(self, dataset_name: str, data: Any, node) -> None:
        if data is not UNCHANGED and self._tracking():
            record = partial(record_saved, self._catalog, dataset_name, data, self._run_params)
            self._tolerate(f"log {dataset_name}", record)

    def _tracking(self) -> bool:
        return self._tracks and not self._tracking_failed and mlflow.active_run() is not None
