"""The run's console: what it shows (conf/logging.yml), the run's log file, and the closing summary.

The console shows warnings, errors, and this project's INFO lines not marked DETAIL (frcnn_pipeline/console/
detail.py); each run's log file keeps every line, Kedro's per-node lines among them.
"""

from __future__ import annotations

import datetime
import logging
import os
import time
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import mlflow
from kedro.framework.hooks import hook_impl
from rich.logging import RichHandler

from frcnn_pipeline.console.progress import format_duration

if TYPE_CHECKING:
    from kedro.framework.context import KedroContext
    from kedro.io import DataCatalog
    from kedro.pipeline import Node, Pipeline

log = logging.getLogger(__name__)

RUN_LOG_DIR = Path("logs")
SHOWN_OUTPUT_NAMES = 3  # per folder in the summary; the log file lists them all


def shown_on_console(record: logging.LogRecord) -> bool:
    """Warnings and errors, and this project's INFO lines that are not DETAIL; the rest is the log file's.

    Kedro's "Node … failed with error: <message>" is left out too: the message ends the run once more below it
    (the short error or the traceback), and `ConsoleHook.on_node_error` names the node.
    """
    if record.name == "kedro.pipeline.node" and str(record.msg).startswith("Node %s failed with error"):
        return False
    if record.levelno >= logging.WARNING:
        return True
    return record.name.startswith("frcnn_pipeline") and not getattr(record, "detail", False)


class RunLogFile(logging.FileHandler):
    """Every line of one run in `logs/run_<UTC time>_<pid>.log`: runs never share or overwrite a log."""

    def __init__(self, directory: Path = RUN_LOG_DIR):
        directory.mkdir(parents=True, exist_ok=True)
        stamp = datetime.datetime.now(datetime.UTC).strftime("%Y%m%d-%H%M%S")
        super().__init__(directory / f"run_{stamp}_{os.getpid()}.log", delay=True, encoding="utf-8")
        self.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))


def set_up_console(log_dir: Path = RUN_LOG_DIR) -> Path:
    """The console shows only what `shown_on_console` lets through; a new run log takes every line (its path
    returned).

    Done in code: Kedro 1.7's logging YAML names no filter factory nor any handler class outside `logging`
    and `kedro.logging` (unless every user sets KEDRO_LOGGING_MODULE_ALLOWLIST).
    """
    root = logging.getLogger()
    for handler in list(root.handlers):
        if isinstance(handler, RunLogFile):
            root.removeHandler(handler)
            handler.close()
        elif isinstance(handler, RichHandler) and shown_on_console not in handler.filters:
            handler.addFilter(shown_on_console)
    run_log = RunLogFile(log_dir)
    root.addHandler(run_log)
    return Path(os.path.relpath(run_log.baseFilename))  # as `kedro run`, in the project's folder, shows it


def widen_logs_off_terminal(width: int = 160) -> None:
    """rich wraps log lines at 80 columns when stdout is not a terminal, which breaks tables over several
    lines; Kedro's logging YAML cannot set the console's width."""
    if "COLUMNS" in os.environ:
        return
    for handler in logging.getLogger().handlers:
        console = getattr(handler, "console", None)
        if console is not None and not console.is_terminal:
            console.width = width


def _file_paths(config: Any) -> Iterator[str]:
    """The `filepath`s of a dataset's configuration, those of wrapped datasets included."""
    if isinstance(config, dict):
        for key, value in config.items():
            if key in {"filepath", "path"} and isinstance(value, str):
                yield value
            else:
                yield from _file_paths(value)


def output_folders(saved: list[str], catalog_config: dict[str, Any]) -> dict[str, list[str]]:
    """The saved datasets by the folder they went to (`data/08_reporting/evaluate`); in-memory ones apart."""
    folders: dict[str, list[str]] = {}
    for name in saved:
        path = next(_file_paths(catalog_config.get(name, {})), None)
        if path is None:
            continue
        if "://" in path:  # a remote store: its folder as written
            folder = path.rsplit("/", 1)[0]
        else:  # at most three levels deep (data/08_reporting/evaluate): one line per stage
            folder = str(Path(*Path(os.path.relpath(path)).parent.parts[:3]))
        folders.setdefault(folder, []).append(name)
    return folders


def summary_lines(  # noqa: PLR0917 (one value per line of the summary)
    seconds: float,
    node_count: int,
    saved: list[str],
    catalog_config: dict[str, Any],
    save_version: str | None,
    metrics: dict[str, dict[str, float]],
    tracking: str | None,
    log_path: Path | None,
) -> list[str]:
    """The closing summary: how long, the box AP of each evaluated split, where each output went."""
    lines = [f"Run complete in {format_duration(seconds)}: {node_count} nodes"]
    for split, values in metrics.items():
        ap = "  ".join(
            f"{name} {100 * values[name]:.2f}" for name in ("AP", "AP50", "AP75") if name in values
        )
        lines.append(f"  box AP on {split} (%): {ap}")
    folders = output_folders(saved, catalog_config)
    if folders:
        lines.append(f"  outputs{f' (version {save_version})' if save_version else ''}:")
        for folder, names in sorted(folders.items()):
            shown = ", ".join(name.rpartition(".")[2] for name in names[:SHOWN_OUTPUT_NAMES])
            more = f", and {len(names) - SHOWN_OUTPUT_NAMES} more" if len(names) > SHOWN_OUTPUT_NAMES else ""
            lines.append(f"    {folder}/  {shown}{more}")
    if tracking:
        lines.append(f"  tracking: {tracking}")
    if log_path is not None:
        lines.append(f"  every line of this run: {log_path}")
    return lines


class ConsoleHook:
    """Sets up the console and the run's log file as a session starts; after a successful run, one closing
    summary in place of Kedro's closing line (which goes to the log file)."""

    def __init__(self) -> None:
        self._started = time.monotonic()
        self._saved: list[str] = []
        self._metrics: dict[str, dict[str, float]] = {}
        self._log_path: Path | None = None

    @hook_impl(tryfirst=True)  # before the other hooks log
    def after_context_created(self, context: KedroContext) -> None:
        widen_logs_off_terminal()
        self._log_path = set_up_console(Path(context.project_path) / RUN_LOG_DIR)

    @hook_impl
    def before_pipeline_run(self, pipeline: Pipeline) -> None:
        self._started = time.monotonic()
        self._saved, self._metrics = [], {}

    @hook_impl
    def on_node_error(self, node: Node) -> None:
        log.error("Node %s failed; every line of this run: %s", node.name, self._log_path)

    @hook_impl
    def after_dataset_saved(self, dataset_name: str, data: Any) -> None:
        self._saved.append(dataset_name)
        if dataset_name.endswith(".coco_metrics") and isinstance(data, dict):
            split = dataset_name.split(".")[-2]
            self._metrics[split] = data.get("metrics", {})

    @hook_impl
    def after_pipeline_run(self, pipeline: Pipeline, catalog: DataCatalog) -> None:
        config, _, _, save_version = catalog.to_config()
        lines = summary_lines(
            time.monotonic() - self._started,
            len(pipeline.nodes),
            self._saved,
            config,
            save_version,
            self._metrics,
            _tracking_line(),
            self._log_path,
        )
        log.info("%s", "\n".join(lines))


def _tracking_line() -> str | None:
    """The MLflow run this run records to, while kedro-mlflow still holds it open."""
    run = mlflow.active_run()
    if run is None:
        return None
    return f"MLflow run {run.info.run_name} ({run.info.run_id[:8]}) in {mlflow.get_tracking_uri()}"
