"""The project's config loader: Kedro's OmegaConfigLoader with the settings every run uses.

settings.py registers it for Kedro; the parameter docs generator (parameter_docs.py) builds it from here, so
that reading conf/ needs neither the project's settings nor its hooks.
"""

from __future__ import annotations

import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from kedro.config import OmegaConfigLoader

LOADER_ARGS = {
    "base_env": "base",
    "default_run_env": "local",
    # Soft merge: an env overrides single nested keys instead of replacing whole sections.
    "merge_strategy": {"parameters": "soft", "mlflow": "soft"},
    "config_patterns": {"mlflow": ["mlflow*", "mlflow*/**"]},
}


@contextmanager
def resolver_deprecation_silenced() -> Iterator[None]:
    """Kedro 1.7 and kedro-mlflow call OmegaConf's deprecated register_new_resolver on every run; the warning
    is not actionable for users and buries the pipeline's own log."""
    with warnings.catch_warnings():
        warnings.filterwarnings(
            "ignore", message=r"register_new_resolver\(\) is deprecated", category=UserWarning
        )
        yield


class ProjectConfigLoader(OmegaConfigLoader):
    """OmegaConfigLoader without the deprecation warning it raises as it is created and read."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        with resolver_deprecation_silenced():
            super().__init__(*args, **kwargs)

    def __getitem__(self, key: str) -> dict[str, Any]:
        with resolver_deprecation_silenced():
            return super().__getitem__(key)
