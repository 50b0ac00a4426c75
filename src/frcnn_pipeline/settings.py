"""Project settings. https://docs.kedro.org/en/stable/kedro_project_setup/settings.html"""

import warnings

from kedro.config import OmegaConfigLoader

from frcnn_pipeline.hooks import MainProcessSavesHooks

CONFIG_LOADER_CLASS = OmegaConfigLoader
CONFIG_LOADER_ARGS = {
    "base_env": "base",
    "default_run_env": "local",
    # Soft merge: an env overrides single nested keys instead of replacing whole sections.
    "merge_strategy": {"parameters": "soft"},
}

# Kedro 1.7's config loader calls OmegaConf's deprecated register_new_resolver on every run; the warning is
# not actionable for users and buries the pipeline's own log.
warnings.filterwarnings("ignore", message=r"register_new_resolver\(\) is deprecated", category=UserWarning)

# In a multi-node run only the job's main process writes catalog outputs (see hooks.py).
HOOKS = (MainProcessSavesHooks(),)
