"""Project settings. https://docs.kedro.org/en/stable/kedro_project_setup/settings.html"""

import os
import warnings

# MLflow's usage telemetry is sent from `import mlflow` on: off before anything imports it (Kedro imports this
# module before its plugins). Nothing leaves the machine unless a remote tracking URI is configured.
os.environ["MLFLOW_DISABLE_TELEMETRY"] = "true"

from kedro.config import OmegaConfigLoader

from frcnn_pipeline.hooks import ProjectMlflowHook

CONFIG_LOADER_CLASS = OmegaConfigLoader
CONFIG_LOADER_ARGS = {
    "base_env": "base",
    "default_run_env": "local",
    # Soft merge: an env overrides single nested keys instead of replacing whole sections.
    "merge_strategy": {"parameters": "soft", "mlflow": "soft"},
    "config_patterns": {"mlflow": ["mlflow*", "mlflow*/**"]},
}

# kedro-mlflow's hook, extended with what this project's runs record (frcnn_pipeline/hooks.py); the plugin's
# own instance is disabled so that the hook runs once.
HOOKS = (ProjectMlflowHook(),)
DISABLE_HOOKS_FOR_PLUGINS = ("kedro_mlflow",)

# Kedro 1.7's config loader calls OmegaConf's deprecated register_new_resolver on every run; the warning is
# not actionable for users and buries the pipeline's own log.
warnings.filterwarnings("ignore", message=r"register_new_resolver\(\) is deprecated", category=UserWarning)
