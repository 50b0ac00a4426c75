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
"""

from __future__ import annotations

import logging
import warnings
from numbers import Real
from pathlib import Path
from typing import Any

import mlflow
from kedro.config import MissingConfigException
from kedro.framework.hooks import hook_impl
from kedro.io import AbstractDataset
from mlflow.exceptions import MlflowException
from mlflow.utils.validation import MAX_PARAM_VAL_LENGTH, MAX_PARAMS_TAGS_PER_BATCH
from omegaconf import OmegaConf

from frcnn_pipeline.config import TrainParams, flatten, validate_parameters
from frcnn_pipeline.data.fingerprint import tables_fingerprint
from frcnn_pipeline.datasets import UNCHANGED
from frcnn_pipeline.engine.checkpoint import CheckpointManager, load_checkpoint
from frcnn_pipeline.engine.launcher import WorldConfig
from frcnn_pipeline.engine.provenance import git_state, package_versions
from frcnn_pipeline.engine.resume import ResumeRefusedError, check_resume
from frcnn_pipeline.modeling import resolve_model_config
from frcnn_pipeline.modeling.saved import TRAINED_MODEL, SavedDetector

# kedro-mlflow's pipeline model (unused here) makes mlflow warn about its type hints on import, under a
# "once" filter of mlflow's own that no filter of ours can precede: the warning is recorded and dropped.
with warnings.catch_warnings(record=True):
    from kedro_mlflow.framework.hooks.mlflow_hook import MlflowHook

log = logging.getLogger(__name__)

# The dataset that names the data a run was made from; a pipeline that outputs TRAINED_MODEL trains.
DATA_RECORD = "validation_summary"
TRAIN_IMAGES, TRAIN_ANNOTATIONS = "train_images", "train_annotations"
SQLITE_PREFIX = "sqlite:///"


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


def _create_sqlite_folder(context) -> None:
    """SQLite creates its database file but not the folder; a fresh checkout or copy may lack it."""
    try:
        uri = context.config_loader["mlflow"].get("server", {}).get("mlflow_tracking_uri") or ""
    except MissingConfigException:
        return
    if uri.startswith(SQLITE_PREFIX) and uri != SQLITE_PREFIX + ":memory:":
        Path(uri.removeprefix(SQLITE_PREFIX)).parent.mkdir(parents=True, exist_ok=True)


def _use_a_private_store(context) -> None:
    """The processes of a multi-node job other than the main one track nothing and may write nothing into the
    project: kedro-mlflow still opens a store at start-up (and two processes creating one SQLite file race),
    so theirs is in memory. A config value set on the loader takes precedence over the files."""
    try:
        config = context.config_loader["mlflow"]
    except MissingConfigException:
        config = {}
    server = {**config.get("server", {}), "mlflow_tracking_uri": SQLITE_PREFIX + ":memory:"}
    context.config_loader["mlflow"] = {**config, "server": server}


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

    @hook_impl
    def after_context_created(self, context) -> None:
        self._project_path = Path(context.project_path)
        # conf/base/mlflow.yml places the local store inside the project, wherever kedro is started from.
        OmegaConf.register_new_resolver("project_path", self._project_path.as_posix, replace=True)
        if WorldConfig.from_runtime(context.params.get("runtime") or {}).is_main_process:
            _create_sqlite_folder(context)
        else:
            _use_a_private_store(context)
        super().after_context_created(context)
        self._params = context.params
        self._env = context.env
        uri = self.mlflow_config.server.mlflow_tracking_uri
        log.info("MLflow tracking store: %s", uri)

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
        world = WorldConfig.from_runtime(self._params.get("runtime") or {})
        # One hook object serves every session of a process; kedro-mlflow sets run_id only when it tracks, and
        # a stale id would make an untracked session re-enter an earlier session's run.
        self.run_id = None
        self._resumed_params = {}
        self._logged_params = set()
        if not world.is_main_process:
            log.info("%s: the main process tracks the run in MLflow", world.summary())
            self.mlflow_config.tracking.disable_tracking.pipelines = [*names]
        elif TRAINED_MODEL in pipeline.all_outputs() and not self._already_active_mlflow:
            self._continue_training_run(pipeline, catalog)
        super().before_pipeline_run(run_params=run_params, pipeline=pipeline, catalog=catalog)
        if self._is_mlflow_enabled:
            self._record_run(pipeline, catalog)

    @hook_impl
    def after_pipeline_run(self, run_params: dict[str, Any], pipeline, catalog) -> None:
        super().after_pipeline_run(run_params=run_params, pipeline=pipeline, catalog=catalog)
        # kedro-mlflow re-enters the run before each node and ends it once: with MLflow 3 the run stays on
        # this thread's stack, and a second session in one process (a notebook, a test) would log into it.
        if self._is_mlflow_enabled and not self._already_active_mlflow:
            while (active := mlflow.active_run()) is not None and active.info.run_id == self.run_id:
                mlflow.end_run()

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
        except MlflowException:
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
        if not isinstance(data, SavedDetector) or not self._tracking():
            return
        origin = {key: data.origin.get(key) for key in ("sha256", "version")}
        self._log_params({f"{dataset_name}.{key}": value for key, value in origin.items() if value})
        training_run = data.provenance.get("tracking_run_id")
        if training_run:
            mlflow.set_tag(f"{dataset_name}.mlflow_run_id", training_run)

    @hook_impl
    def after_dataset_saved(self, dataset_name: str, data: Any, node) -> None:
        if data is UNCHANGED or not self._tracking():
            return
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
        return self._is_mlflow_enabled and mlflow.active_run() is not None
