"""Project settings. https://docs.kedro.org/en/stable/kedro_project_setup/settings.html

Importing this module only defines the settings: the hooks and the config loader that act on a run live in
frcnn_pipeline.framework.
"""

from frcnn_pipeline.framework.config_loader import LOADER_ARGS, ProjectConfigLoader
from frcnn_pipeline.framework.console import ConsoleHook
from frcnn_pipeline.framework.hooks import (
    MainProcessSavesHooks,
    MissingInputsHook,
    ReportOnFailureHook,
    RunConfigHook,
)
from frcnn_pipeline.framework.mlflow_hook import ProjectMlflowHook

CONFIG_LOADER_CLASS = ProjectConfigLoader
CONFIG_LOADER_ARGS = LOADER_ARGS

# The parameters are checked against the schema (frcnn_pipeline.config) into the run's configuration before
# anything runs; it decides the pipelines' shape (the evaluation splits of `ingest.splits`,
# `runtime.inference_backend`) and the world, and hands the nodes their typed sections; then the pipeline's
# stored inputs must exist. kedro-mlflow's hook, extended with what this project's runs record
# (frcnn_pipeline/framework/mlflow_hook.py), replaces the plugin's own instance so that it runs once. Pluggy
# calls the hooks registered last first: the inputs are checked before an MLflow run opens. In a multi-node
# run only the job's main process writes catalog outputs and tracks.
RUN_CONFIG = RunConfigHook()
HOOKS = (
    RUN_CONFIG,
    ProjectMlflowHook(RUN_CONFIG),
    MissingInputsHook(RUN_CONFIG),
    MainProcessSavesHooks(RUN_CONFIG),
    ReportOnFailureHook(),
    ConsoleHook(),  # registered last, called first: the console is set up first; the MLflow run still open
)
DISABLE_HOOKS_FOR_PLUGINS = ("kedro_mlflow",)
