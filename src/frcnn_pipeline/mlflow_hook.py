"""Experiment tracking: kedro-mlflow's hook, and what a run of this project records in MLflow (settings.py
registers it).

kedro-mlflow opens one MLflow run per `kedro run` and closes it at the end. This subclass adds:

- a run that trains is named after `train.run_name` and, when it resumes a training, continues the MLflow
  run whose id the checkpoint holds, provided the training will resume it (engine/resume.py). A parameter
  changed on resume, e.g. a raised `max_iter`, is kept as MLflow logged it first and the new value goes to a
  `changed_on_resume.<name>` tag, as MLflow refuses to change a logged parameter;
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

The training workers log their live metrics themselves (engine/tracking.py).

The store is checked before anything runs (frcnn_pipeline.mlflow_store): one that cannot be used stops a run
that tracks with a few lines naming it and the fix, and lets a run with tracking switched off go on. A store
that fails mid-run costs a warning and the rest of that run's tracking, never the run: its outputs are saved
as usual. A store copied or moved with the project has its artifact locations moved into this project.
"""

from __future__ import annotations

import logging
import warnings
from collections.abc import Callable
from functools import partial
from numbers import Real
from pathlib import Path
from typing import Any

import mlflow
from kedro.framework.hooks import hook_impl
from kedro.io import AbstractDataset
from mlflow.exceptions import MlflowException
from mlflow.utils.validation import MAX_PARAM_VAL_LENGTH, MAX_PARAMS_TAGS_PER_BATCH
from omegaconf import OmegaConf

from frcnn_pipeline.config import RuntimeParams, Section, TrainParams, flatten, validate_parameters
from frcnn_pipeline.data.fingerprint import tables_fingerprint
from frcnn_pipeline.datasets import UNCHANGED
from frcnn_pipeline.engine.checkpoint import CheckpointManager, load_checkpoint
from frcnn_pipeline.engine.resume import ResumeRefusedError, check_resume
from frcnn_pipeline.engine.tracking import quiet_store_errors
from frcnn_pipeline.mlflow_store import (
    MLFLOW_ERRORS,
    STORE_ERRORS,
    TrackingStoreError,
    check_sqlite_store,
    configured_store,
    repoint_moved_project,
    store_error,
    use_a_private_store,
)
from frcnn_pipeline.modeling import resolve_model_config
from frcnn_pipeline.modeling.saved import TRAINED_MODEL, SavedDetector
from frcnn_pipeline.runtime.provenance import git_state, package_versions
from frcnn_pipeline.runtime.world import WorldConfig

# kedro-mlflow's pipeline model (unused here) makes mlflow warn about its type hints on import, under a
# "once" filter of mlflow's own that no filter of ours can precede: the warning is recorded and dropped.
with warnings.catch_warnings(record=True):
    from kedro_mlflow.framework.hooks.mlflow_hook import MlflowHook

log = logging.getLogger(__name__)


class _EachMessageOnce(logging.Filter):
    def __init__(self) -> None:
        super().__init__()
        self.seen: set[str] = set()

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        first = message not in self.seen
        self.seen.add(message)
        return first


# The dataset that names the data a run was made from; a pipeline that outputs TRAINED_MODEL trains.
DATA_RECORD = "validation_summary"
TRAIN_IMAGES, TRAIN_ANNOTATIONS = "train_images", "train_annotations"


def resumed_checkpoint(train: TrainParams) -> Path | None:
    """The newest checkpoint of `train.run_name`, which the training resumes (None: nothing to resume)."""
    if not train.checkpoint.resume:
        return None
    return CheckpointManager(Path(train.checkpoint.dir) / train.run_name).latest()


def stored_train_data_fingerprint(pipeline, catalog) -> str | None:
    """The train tables' fingerprint when the pipeline reads them as stored (None: this run writes them)."""
    if not {TRAIN_IMAGES, TRAIN_ANNOTATIONS} <= pipeline.inputs():
        return None
    return tables_fingerprint(catalog.load(TRAIN_IMAGES), catalog.load(TRAIN_ANNOTATIONS))


def saved_file(dataset: AbstractDataset) -> Path:
    """The local file a dataset's last save wrote (the version of this session when versioned).

    Kedro has no public "where did you write" API; kedro-mlflow's MlflowArtifactDataset reads the same
    attributes.
    """
    inner = getattr(dataset, "wrapped", dataset)
    if not hasattr(inner, "_filepath"):
        raise ValueError(f"{dataset} writes no file: remove `metadata: mlflow: artifact_path` from its entry")
    if getattr(inner, "_version", None) is not None:
        return Path(inner._get_versioned_path(inner.resolve_save_version()))
    return Path(inner._filepath)


class ProjectMlflowHook(MlflowHook):
    """kedro-mlflow's `MlflowHook` with this project's run record (see the module docstring)."""

    def __init__(self):
        super().__init__()
        self._params: dict[str, Any] = {}
        self._env: str | None = None
        self._project_path = Path.cwd()
        self._catalog = None
        self._resumed_params: dict[str, str] = {}
        # What this run logged from the validated parameters: kedro-mlflow logs each node's raw `params:`
        # inputs again, where a float key written as an integer (120 for 120.0) would be a "changed" param.
        self._logged_params: set[str] = set()
        # The configured store cannot be used: raised before a run that tracks (None: it can).
        self._store_error: TrackingStoreError | None = None
        self._store_uri = ""
        self._tracking_failed = False  # the store failed mid-run: the run goes on untracked

    @hook_impl
    def after_context_created(self, context) -> None:
        self._project_path = Path(context.project_path)
        # conf/base/mlflow.yml places the local store inside the project, wherever kedro is started from.
        OmegaConf.register_new_resolver("project_path", self._project_path.as_posix, replace=True)
        self._store_error, self._tracking_failed = None, False
        self._store_uri = configured_store(context)
        runtime = RuntimeParams.parse(context.params.get("runtime"), "runtime")
        is_main = WorldConfig.from_runtime(runtime).is_main_process
        if is_main:
            try:
                check_sqlite_store(self._store_uri)
            except TrackingStoreError as error:
                self._store_error = error
        if self._store_error is not None or not is_main:
            use_a_private_store(context)  # opened by kedro-mlflow whether the pipeline tracks or not
        try:
            with quiet_store_errors():
                super().after_context_created(context)
        except STORE_ERRORS as error:  # a store other than SQLite, or one that failed after the check
            self._store_error = store_error(self._store_uri or "(kedro-mlflow's default)", error)
            use_a_private_store(context)
            super().after_context_created(context)
        self._params = context.params
        self._env = context.env
        if self._store_error is not None:
            if self._store_uri:  # what `kedro mlflow ui` opens; this process tracks nothing
                self.mlflow_config.server.mlflow_tracking_uri = self._store_uri
            return
        self._store_uri = self.mlflow_config.server.mlflow_tracking_uri
        log.info("MLflow tracking store: %s", self._store_uri)
        if is_main and not self._already_active_mlflow:
            self._keep_artifacts_in_project()

    def _keep_artifacts_in_project(self) -> None:
        """A store copied or moved with the project points into the old folder: repointed, with a warning."""
        experiment = self.mlflow_config.tracking.experiment
        if experiment._experiment is None:
            return
        configured = experiment.create_experiment_kwargs.artifact_location
        stored = experiment._experiment.artifact_location
        if repoint_moved_project(self._store_uri, stored, configured, self._project_path):
            client = self.mlflow_config.server._mlflow_client
            experiment._experiment = client.get_experiment(experiment._experiment.experiment_id)

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
        world = WorldConfig.from_runtime(RuntimeParams.parse(self._params.get("runtime"), "runtime"))
        # One hook object serves every session of a process; kedro-mlflow sets run_id only when it tracks, and
        # a stale id would make an untracked session re-enter an earlier session's run.
        self.run_id = None
        self._resumed_params = {}
        self._logged_params = set()
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
                trains = TRAINED_MODEL in pipeline.all_outputs()
                if world.is_main_process and trains and not self._already_active_mlflow:
                    self._continue_training_run(pipeline, catalog)
                super().before_pipeline_run(run_params=run_params, pipeline=pipeline, catalog=catalog)
                if self._is_mlflow_enabled:
                    self._record_run(pipeline, catalog)
        except MLFLOW_ERRORS as error:  # the store failed since the check at start-up
            raise store_error(self._store_uri, error) from error

    @hook_impl
    def before_node_run(self, node, catalog, inputs: dict[str, Any], is_async: bool) -> None:
        # Kedro instantiates `params:` inputs as the nodes' annotations say; kedro-mlflow flattens mappings.
        plain = {
            name: value.model_dump() if isinstance(value, Section) else value
            for name, value in inputs.items()
        }
        log_params = partial(
            super().before_node_run, node=node, catalog=catalog, inputs=plain, is_async=is_async
        )
        self._tolerate(f"log the parameters of node {node.name}", log_params)

    @hook_impl
    def after_pipeline_run(self, run_params: dict[str, Any], pipeline, catalog) -> None:
        # Tried even after a failure mid-run: the store may answer again, and the run should not stay open.
        end = partial(super().after_pipeline_run, run_params=run_params, pipeline=pipeline, catalog=catalog)
        self._tolerate("end the run", end, after_failure=True)
        # kedro-mlflow re-enters the run before each node and ends it once: with MLflow 3 the run stays on
        # this thread's stack, and a second session in one process (a notebook, a test) would log into it.
        # mlflow.end_run takes the run off the stack before it tells the store.
        if self._is_mlflow_enabled and not self._already_active_mlflow:
            while (active := mlflow.active_run()) is not None and active.info.run_id == self.run_id:
                self._tolerate("end the run", mlflow.end_run, after_failure=True)

    @hook_impl
    def on_pipeline_error(self, error: Exception, run_params: dict[str, Any], pipeline, catalog) -> None:
        if self._tracking_failed and mlflow.active_run() is None:
            return  # the run was not reopened after the store failed (kedro-mlflow expects one)
        end = partial(super().on_pipeline_error, error, run_params, pipeline, catalog)
        # kedro-mlflow re-enters the run before each node and, on an error, says "closed" once per entry.
        kedro_mlflow_log, once = logging.getLogger(MlflowHook.__module__), _EachMessageOnce()
        kedro_mlflow_log.addFilter(once)
        try:
            self._tolerate("mark the run as failed", end, after_failure=True)
        finally:
            kedro_mlflow_log.removeFilter(once)

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

    def _continue_training_run(self, pipeline, catalog) -> None:
        """Name the run after the training; reuse the MLflow run of the checkpoint this training resumes.

        A checkpoint the training will refuse (another model, solver or train data: engine/resume.py) keeps
        its run as it is: this run is a new one, and the train node stops with the reason.
        """
        train = TrainParams.parse(self._params.get("train"), "train")
        run = self.mlflow_config.tracking.run
        run.name = run.name or train.run_name
        if run.id is not None:
            return
        checkpoint = resumed_checkpoint(train)
        state = load_checkpoint(checkpoint, mmap=True) if checkpoint else {}
        run_id = state.get("tracking_run_id")
        if run_id is None:
            return
        try:
            check_resume(
                state,
                checkpoint,
                model_cfg=resolve_model_config(self._params.get("model")),
                train_cfg=train.model_dump(),
                data_fingerprint=stored_train_data_fingerprint(pipeline, catalog),
            )
        except ResumeRefusedError:
            log.info(
                "train.run_name %r cannot resume %s: a new MLflow run, not a continuation of %s",
                train.run_name,
                checkpoint,
                run_id,
            )
            return
        client = self.mlflow_config.server._mlflow_client
        try:
            previous = client.get_run(run_id)
        except MlflowException as error:
            if error.error_code != "RESOURCE_DOES_NOT_EXIST":
                raise
            log.warning(
                "The checkpoint of train.run_name %r was tracked in MLflow run %s, which is not in %s: "
                "the training continues in a new run",
                train.run_name,
                run_id,
                self.mlflow_config.server.mlflow_tracking_uri,
            )
            return
        if previous.info.lifecycle_stage == "deleted":
            log.warning(
                "MLflow run %s of train.run_name %r was deleted: a new run starts", run_id, train.run_name
            )
            return
        run.id = run_id
        self._resumed_params = dict(previous.data.params)
        log.info("Resuming train.run_name %r: continuing MLflow run %s", train.run_name, run_id)

    def _record_run(self, pipeline, catalog) -> None:
        git = git_state(self._project_path)
        tags = {
            "kedro_env": self._env or "local",
            "mlflow.source.git.commit": git["commit"] or "unknown (not a git checkout)",
            "git.dirty": "unknown" if git["dirty"] is None else git["dirty"],
            **{f"version.{name}": version for name, version in package_versions().items()},
        }
        mlflow.set_tags(tags)
        resolved = {name: section.model_dump() for name, section in validate_parameters(self._params).items()}
        self._log_params(flatten(resolved))
        if DATA_RECORD not in pipeline.all_outputs() and catalog.exists(DATA_RECORD):
            self._log_data_record(catalog.load(DATA_RECORD))

    def _log_params(self, params: dict[str, Any]) -> None:
        """In batches. A resumed run already holds most of them; what it holds with another value, or what is
        too long for MLflow, goes through `_log_param`."""
        plain, special = {}, {}
        for raw_name, value in params.items():
            name = self.sanitize_param_name(raw_name)
            previous = self._resumed_params.get(name)
            if previous == str(value):
                continue
            if previous is not None or len(str(value)) > MAX_PARAM_VAL_LENGTH:
                special[name] = value
            else:
                plain[name] = value
        names = list(plain)
        for start in range(0, len(names), MAX_PARAMS_TAGS_PER_BATCH):
            mlflow.log_params(
                {name: plain[name] for name in names[start : start + MAX_PARAMS_TAGS_PER_BATCH]}
            )
        for name, value in special.items():
            self._log_param(name, value)
        self._logged_params.update(plain, special)

    def _log_param(self, name: str, value: Any) -> None:
        if name in self._logged_params:
            return  # already logged, validated and typed (the raw node input says the same)
        previous = self._resumed_params.get(name)
        if previous is None or previous == str(value):
            super()._log_param(name, value)
            return
        log.warning(
            "%s changed on resume (%s -> %s): MLflow keeps the first value; tag changed_on_resume.%s",
            name,
            previous,
            value,
            name,
        )
        mlflow.set_tag(f"changed_on_resume.{name}", str(value))

    def _log_data_record(self, summary: dict[str, Any]) -> None:
        fingerprints = summary.get("fingerprints", {})
        self._log_params(flatten({"data": fingerprints}))
        mlflow.log_dict(summary, f"data/{DATA_RECORD}.json")

    @hook_impl
    def after_dataset_loaded(self, dataset_name: str, data: Any, node) -> None:
        if isinstance(data, SavedDetector) and self._tracking():
            self._tolerate(f"record {dataset_name}", lambda: self._record_model(dataset_name, data))

    def _record_model(self, dataset_name: str, data: SavedDetector) -> None:
        origin = {key: data.origin.get(key) for key in ("sha256", "version")}
        self._log_params({f"{dataset_name}.{key}": value for key, value in origin.items() if value})
        training_run = data.provenance.get("tracking_run_id")
        if training_run:
            mlflow.set_tag(f"{dataset_name}.mlflow_run_id", training_run)

    @hook_impl
    def after_dataset_saved(self, dataset_name: str, data: Any, node) -> None:
        if data is not UNCHANGED and self._tracking():
            self._tolerate(f"log {dataset_name}", lambda: self._log_saved(dataset_name, data))

    def _log_saved(self, dataset_name: str, data: Any) -> None:
        if dataset_name == DATA_RECORD:
            self._log_params(flatten({"data": data.get("fingerprints", {})}))
        dataset = self._catalog.get(dataset_name) if self._catalog is not None else None
        settings = (getattr(dataset, "metadata", None) or {}).get("mlflow")
        if not settings:
            return
        if "artifact_path" in settings:
            mlflow.log_artifact(str(saved_file(dataset)), settings["artifact_path"])
        log_metrics = settings.get("log_metrics")
        if log_metrics:
            values = data if log_metrics is True else data[log_metrics]
            numbers = {
                f"{dataset_name}/{key}": float(value)
                for key, value in flatten(values).items()
                if isinstance(value, Real) and not isinstance(value, bool)
            }
            mlflow.log_metrics(numbers)

    def _tracking(self) -> bool:
        return self._is_mlflow_enabled and not self._tracking_failed and mlflow.active_run() is not None
