"""What a run of this project records in MLflow, besides what kedro-mlflow logs (framework/mlflow_hook.py):
its parameters, each once; its tags (env, code, package versions); the models it loads; the datasets it saves
whose catalog entry asks for it."""

from __future__ import annotations

import logging
from collections.abc import Callable
from numbers import Real
from pathlib import Path
from typing import Any

import mlflow
from kedro.io import DataCatalog
from mlflow.utils.validation import MAX_PARAM_VAL_LENGTH, MAX_PARAMS_TAGS_PER_BATCH

from frcnn_pipeline.config import flatten
from frcnn_pipeline.modeling.saved import SavedDetector
from frcnn_pipeline.runtime.provenance import git_state, package_versions

log = logging.getLogger(__name__)

# The dataset that names the data a run was made from.
DATA_RECORD = "validation_summary"


class RunParams:
    """The parameters one MLflow run logs: in batches, each once.

    A resumed run already holds most of them (`resumed`): an unchanged value is skipped, a changed one, e.g.
    a raised `max_iter`, goes to a `changed_on_resume.<name>` tag, as MLflow refuses to change a logged
    parameter. A value too long for MLflow follows `long_params_strategy` (mlflow.yml: tag, truncate or fail).
    """

    def __init__(
        self,
        long_params_strategy: str = "fail",
        sanitize: Callable[[str], str] = str,
        resumed: dict[str, str] | None = None,
    ):
        self.long_params_strategy = long_params_strategy
        self.sanitize = sanitize
        self.resumed: dict[str, str] = resumed or {}
        # Logged from the validated parameters: a node's raw `params:` input would say the same, but a float
        # key written as an integer (120 for 120.0) would be a "changed" param.
        self.logged: set[str] = set()

    def log(self, params: dict[str, Any]) -> None:
        plain, special = {}, {}
        for raw_name, value in params.items():
            name = self.sanitize(raw_name)
            previous = self.resumed.get(name)
            if name in self.logged or previous == str(value):
                continue
            if previous is not None or len(str(value)) > MAX_PARAM_VAL_LENGTH:
                special[name] = value
            else:
                plain[name] = value
        names = list(plain)
        for start in range(0, len(names), MAX_PARAMS_TAGS_PER_BATCH):
            batch = names[start : start + MAX_PARAMS_TAGS_PER_BATCH]
            mlflow.log_params({name: plain[name] for name in batch})
        for name, value in special.items():
            self._log_special(name, value)
        self.logged.update(plain, special)

    def _log_special(self, name: str, value: Any) -> None:
        previous = self.resumed.get(name)
        text = str(value)
        if previous is not None:
            log.warning(
                "%s changed on resume (%s -> %s): MLflow keeps the first value; tag changed_on_resume.%s",
                name,
                previous,
                value,
                name,
            )
            mlflow.set_tag(f"changed_on_resume.{name}", text)
        elif self.long_params_strategy == "tag":
            log.warning("Parameter %r (value length %d) is set as a tag", name, len(text))
            mlflow.set_tag(name, text)
        elif self.long_params_strategy == "truncate":
            log.warning("Parameter %r (value length %d) is truncated", name, len(text))
            mlflow.log_param(name, text[:MAX_PARAM_VAL_LENGTH])
        else:
            raise ValueError(
                f"Parameter {name!r} is {len(text)} characters long, over MLflow's {MAX_PARAM_VAL_LENGTH}: "
                "set tracking.params.long_params_strategy to 'tag' or 'truncate' in mlflow.yml"
            )


def run_tags(project_path: Path, env: str | None) -> dict[str, Any]:
    """The Kedro env, the git commit and whether the tree was dirty, the versions of torch, kedro..."""
    git = git_state(project_path)
    return {
        "kedro_env": env or "local",
        "mlflow.source.git.commit": git["commit"] or "unknown (not a git checkout)",
        "git.dirty": "unknown" if git["dirty"] is None else git["dirty"],
        **{f"version.{name}": version for name, version in package_versions().items()},
    }


def record_data(summary: dict[str, Any], params: RunParams) -> None:
    """The validation summary the run's data was checked with: each split's fingerprint, and the file."""
    params.log(flatten({"data": summary.get("fingerprints", {})}))
    mlflow.log_dict(summary, f"data/{DATA_RECORD}.json")


def record_model(dataset_name: str, data: SavedDetector, params: RunParams) -> None:
    """A loaded model: its file's sha256 and version, and the MLflow run of the training that made it."""
    origin = {key: data.origin.get(key) for key in ("sha256", "version")}
    params.log({f"{dataset_name}.{key}": value for key, value in origin.items() if value})
    training_run = data.provenance.get("tracking_run_id")
    if training_run:
        mlflow.set_tag(f"{dataset_name}.mlflow_run_id", training_run)


def record_saved(catalog: DataCatalog | None, dataset_name: str, data: Any, params: RunParams) -> None:
    """A saved dataset whose entry has `metadata: mlflow: artifact_path: <folder>`: its file as an artefact;
    `log_metrics: true` also logs its numbers as metrics `<dataset>/<key>`, `log_metrics: <key>` those under
    that key."""
    if dataset_name == DATA_RECORD:
        params.log(flatten({"data": data.get("fingerprints", {})}))
    dataset = catalog.get(dataset_name) if catalog is not None else None
    settings = (getattr(dataset, "metadata", None) or {}).get("mlflow")
    if not settings:
        return
    if "artifact_path" in settings:
        mlflow.log_artifact(str(saved_file(catalog, dataset_name)), settings["artifact_path"])
    log_metrics = settings.get("log_metrics")
    if log_metrics:
        values = data if log_metrics is True else data[log_metrics]
        numbers = {
            f"{dataset_name}/{key}": float(value)
            for key, value in flatten(values).items()
            if isinstance(value, Real) and not isinstance(value, bool)
        }
        mlflow.log_metrics(numbers)


def saved_file(catalog: DataCatalog, dataset_name: str) -> Path:
    """The local file a dataset's last save wrote (the version of this session when versioned).

    Kedro has no "where did you write" API: the file is read from the dataset's public config, as the catalog
    declares it (`config_resolver`: its entry, or the pattern it matches) or, in a catalog built from dataset
    objects, as the object was created (`to_config`): its `filepath`, or its wrapped `dataset`'s; and Kedro's
    versioned layout, `<filepath>/<save version>/<file name>`.
    """
    configs, _, _, save_version = catalog.to_config()
    config = catalog.config_resolver.resolve_pattern(dataset_name)
    if "filepath" not in config and "dataset" not in config:
        config = configs.get(dataset_name) or {}
    filepath = config.get("filepath") or (config.get("dataset") or {}).get("filepath")
    if filepath is None:
        raise ValueError(
            f"{dataset_name} writes no file: remove `metadata: mlflow: artifact_path` from its entry"
        )
    path = Path(filepath)
    if not config.get("versioned"):
        return path
    if save_version is None:
        raise ValueError(f"{dataset_name} is versioned but the catalog has no save version")
    return path / save_version / path.name
