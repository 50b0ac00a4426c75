"""Project hooks: the parameters are validated when the context is created, before any node runs."""

from __future__ import annotations

import re
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml
from kedro.framework.hooks import hook_impl

from frcnn_pipeline.config import ParameterError, validate_parameters

if TYPE_CHECKING:
    from kedro.framework.context import KedroContext

REFERENCE = "docs/parameters.md"
_CONFIG_SUFFIXES = {".yml", ".yaml", ".json"}


class ParameterValidationHooks:
    """Stops a run whose parameters have an unknown key or a wrong type, naming each key and its file."""

    @hook_impl(tryfirst=True)  # before any plugin's hook does work with the parameters
    def after_context_created(self, context: KedroContext) -> None:
        loader = context.config_loader
        try:
            validate_parameters(loader["parameters"])
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
