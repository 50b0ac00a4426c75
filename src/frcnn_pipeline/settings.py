"""Project settings. https://docs.kedro.org/en/stable/kedro_project_setup/settings.html"""

import logging
import os
import warnings

# MLflow's usage telemetry is sent from `import mlflow` on: off before anything imports it (Kedro imports this
# module before its plugins). Nothing leaves the machine unless a remote tracking URI is configured.
os.environ["MLFLOW_DISABLE_TELEMETRY"] = "true"

from kedro.config import OmegaConfigLoader

from frcnn_pipeline.hooks import MainProcessSavesHooks, MissingInputsHook, ReportOnFailureHook, RunConfigHook
from frcnn_pipeline.mlflow_hook import ProjectMlflowHook

CONFIG_LOADER_CLASS = OmegaConfigLoader
CONFIG_LOADER_ARGS = {
    "base_env": "base",
    "default_run_env": "local",
    # Soft merge: an env overrides single nested keys instead of replacing whole sections.
    "merge_strategy": {"parameters": "soft", "mlflow": "soft"},
    "config_patterns": {"mlflow": ["mlflow*", "mlflow*/**"]},
}

# The parameters are checked against the schema (frcnn_pipeline.config) into the run's configuration before
# anything runs; it decides the pipelines' shape (the evaluation splits of `ingest.splits`,
# `runtime.inference_backend`) and the world, and hands the nodes their typed sections; then the pipeline's
# stored inputs must exist. kedro-mlflow's hook, extended with what this project's runs record
# (frcnn_pipeline/mlflow_hook.py), replaces the plugin's own instance so that it runs once. Pluggy calls the
# hooks registered last first: the inputs are checked before an MLflow run opens. In a multi-node run only the
# job's main process writes catalog outputs and tracks.
RUN_CONFIG = RunConfigHook()
HOOKS = (
    RUN_CONFIG,
    ProjectMlflowHook(),
    MissingInputsHook(RUN_CONFIG),
    MainProcessSavesHooks(RUN_CONFIG),
    ReportOnFailureHook(),
)
DISABLE_HOOKS_FOR_PLUGINS = ("kedro_mlflow",)

# Kedro 1.7's config loader calls OmegaConf's deprecated register_new_resolver on every run; the warning is
# not actionable for users and buries the pipeline's own log.
warnings.filterwarnings("ignore", message=r"register_new_resolver\(\) is deprecated", category=UserWarning)


def _widen_logs_off_terminal(width: int = 160) -> None:
    """rich wraps log lines at 80 columns when stdout is not a terminal (CI, `| tee`, a batch job's log),
    which breaks tables over several lines; Kedro's logging YAML cannot set the console's width."""
    if "COLUMNS" in os.environ:
        return
    for handler in logging.getLogger().handlers:
        console = getattr(handler, "console", None)
        if console is not None and not console.is_terminal:
            console.width = width


_widen_logs_off_terminal()
