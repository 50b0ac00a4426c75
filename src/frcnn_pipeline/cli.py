"""The project's commands: Kedro's `run` with readable errors, and `viz-site`, an offline kedro-viz build.

Kedro picks up this module's `cli` group, and its `run` overrides the built-in one. Everything else (options,
session, runner) is Kedro's. A `UserFacingError` anywhere in the exception chain ends the run with its
message and the path of a log file holding the full traceback; `--verbose` shows the traceback instead.
Any other exception keeps its full traceback.
"""

from __future__ import annotations

import datetime
import difflib
import json
import logging
import os
import re
import tempfile
import traceback
from pathlib import Path
from typing import Any

import click
from kedro.framework.cli.project import run as kedro_run
from kedro.framework.project import pipelines as registry

from frcnn_pipeline.errors import UserFacingError

ERROR_LOG_DIR = Path("logs")


def user_facing_cause(error: BaseException) -> UserFacingError | None:
    """The first `UserFacingError` in `error`'s chain (Kedro may wrap a node's or a dataset's error)."""
    seen: set[int] = set()
    current: BaseException | None = error
    while current is not None and id(current) not in seen:
        if isinstance(current, UserFacingError):
            return current
        seen.add(id(current))
        current = current.__cause__ or current.__context__
    return None


def write_traceback(error: BaseException, directory: Path = ERROR_LOG_DIR) -> Path:
    """The full traceback in `<directory>/error_<UTC time>.log`; earlier logs are kept."""
    directory.mkdir(parents=True, exist_ok=True)
    stamp = datetime.datetime.now(datetime.UTC).strftime("%Y%m%d-%H%M%S-%f")
    path = directory / f"error_{stamp}.log"
    path.write_text("".join(traceback.format_exception(error)), encoding="utf-8")
    return path


class UnknownPipelineError(UserFacingError, click.UsageError):
    """`--pipeline` names no registered pipeline."""


def check_pipeline_names(requested: list[str]) -> None:
    """Fail before any work when a pipeline name is misspelt, listing the valid ones."""
    if not requested:
        return
    registry.set_requested(None)  # every registered pipeline, not only those named on the command line
    known = sorted(name for name in registry if name != "__default__")
    for name in requested:
        if name not in known and name != "__default__":
            close = difflib.get_close_matches(name, known, n=1)
            hint = f"Did you mean '{close[0]}'? " if close else ""
            raise UnknownPipelineError(
                f"No pipeline named '{name}'. {hint}Valid names: {', '.join(known)} "
                "(or no --pipeline for the default: ingest, weights, train, evaluate)."
            )


@click.group(name="frcnn_pipeline")
def cli() -> None:
    """Project commands."""


def _run(verbose: bool, pipeline: str | None, pipelines: list[str], **options: Any) -> Any:
    # `--pipeline NAME` is the documentation's spelling; Kedro 1.7 deprecates it in favour of `--pipelines`.
    requested = [*pipelines, *([pipeline] if pipeline else [])]
    try:
        check_pipeline_names(requested)
        return kedro_run.callback(pipeline=None, pipelines=requested, **options)
    except Exception as error:
        cause = user_facing_cause(error)
        if cause is None or verbose:
            raise
        log_path = write_traceback(error)
        raise click.ClickException(f"{cause}\nFull traceback: {log_path} (or rerun with --verbose)") from None


run = click.Command(
    name="run",
    callback=_run,
    params=[
        *kedro_run.params,
        click.Option(["--verbose"], is_flag=True, help="Show the full traceback of any error."),
    ],
    help=kedro_run.help,
    short_help=kedro_run.short_help,
)
cli.add_command(run)


# kedro-viz's index.html links Google Fonts ("Inter") and no setting removes the links; without them the page
# uses its CSS fallback font, and no request leaves the machine.
_REMOTE_FONT_LINK = re.compile(r"<link\b[^>]*https://fonts\.(?:googleapis|gstatic)\.com[^>]*>", re.DOTALL)


def strip_remote_fonts(index_html: Path) -> int:
    """Removes the page's links to Google Fonts; returns how many there were."""
    page, count = _REMOTE_FONT_LINK.subn("", index_html.read_text(encoding="utf-8"))
    index_html.write_text(page, encoding="utf-8")
    return count


@cli.command(name="viz-site")
@click.option("--include-previews", is_flag=True, help="Include dataset previews (as kedro viz build).")
@click.pass_context
def viz_site(ctx: click.Context, include_previews: bool) -> None:
    """`kedro viz build` into build/, then made fully offline (no Google Fonts links)."""
    from kedro_viz.launchers.cli.build import build

    with tempfile.TemporaryDirectory() as folder:
        not_produced = NotProducedYet(Path(folder) / "not_produced.txt")
        preview_log = logging.getLogger(PREVIEW_LOGGER)
        preview_log.addFilter(not_produced)
        try:
            ctx.invoke(build, include_hooks=False, include_previews=include_previews)
        finally:
            preview_log.removeFilter(not_produced)
        names = not_produced.names()
    index = Path("build") / "index.html"
    if not index.is_file():
        raise click.ClickException("kedro viz build wrote no build/index.html; see its output above")
    if names:
        mark_not_produced(index.parent, names)
        more = f" and {len(names) - SHOWN_NAMES} more" if len(names) > SHOWN_NAMES else ""
        click.echo(
            f"{len(names)} dataset(s) not produced yet, so their previews say which pipeline makes them "
            f"(run it, then build again): {', '.join(names[:SHOWN_NAMES])}{more}"
        )
    click.echo(f"Offline site in build/ ({strip_remote_fonts(index)} remote font link(s) removed)")


# kedro-viz logs one warning per dataset it cannot preview, a versioned one not saved yet included.
PREVIEW_LOGGER = "kedro_viz.models.flowchart.node_metadata"
SHOWN_NAMES = 6  # of the datasets not produced yet, in the build's one line about them


class NotProducedYet(logging.Filter):
    """Drops kedro-viz's warning for a dataset with no file yet (or no version yet), keeping its name in
    `record`: the build then says once which datasets were not produced yet. Any other preview failure still
    warns. kedro-viz builds in a forked process, which inherits this filter; the names come back in the file.
    """

    def __init__(self, record: Path) -> None:
        super().__init__()
        self.record = record

    def filter(self, record: logging.LogRecord) -> bool:
        args = record.args if isinstance(record.args, tuple) else ()
        if len(args) == 3 and _is_missing(str(args[1]), str(args[2])):
            with self.record.open("a", encoding="utf-8") as names:
                names.write(f"{args[0]}\n")
            return False
        return True

    def names(self) -> list[str]:
        """The datasets not produced yet, each once, sorted."""
        return sorted(set(self.record.read_text(encoding="utf-8").split())) if self.record.exists() else []


def _is_missing(error_type: str, message: str) -> bool:
    """kedro-datasets wrap a missing file in a DatasetError; a versioned one's is a VersionNotFoundError."""
    if error_type in {"FileNotFoundError", "VersionNotFoundError"}:
        return True
    return error_type == "DatasetError" and ("No such file or directory" in message or "versions" in message)


# kedro-viz takes a dataset's preview type from its class (a CSVDataset's is a table) whether or not its file
# exists, and no catalog setting or preview() of ours changes that for kedro-datasets' classes. So after the
# build, such a dataset's node file gets a text preview saying so; else its panel shows no preview at all.
# Not an HTMLPreview: kedro-viz runs that through a regex markdown that turns `evaluate_initial_weights` into
# italics. A TextPreview (the type of Kedro's node previews) is shown as it is, in the same panel.
NOT_PRODUCED_PREVIEW = "TextPreview"


def mark_not_produced(build: Path, names: list[str]) -> None:
    """Gives each dataset in `names`, in the site kedro-viz built into `build`, a preview saying it is not
    produced yet and which pipeline makes it."""
    ids = {}
    for pipeline_file in (build / "api" / "pipelines").iterdir():
        for node in json.loads(pipeline_file.read_text(encoding="utf-8"))["nodes"]:
            if node["type"] == "data" and node["name"] in names:
                ids[node["name"]] = node["id"]
    registry.set_requested(None)  # every registered pipeline
    outputs = {name: registry[name].all_outputs() for name in registry if name != "__default__"}
    for name, node_id in ids.items():
        path = build / "api" / "nodes" / node_id
        details = json.loads(path.read_text(encoding="utf-8"))
        makers = sorted(pipeline for pipeline, made in outputs.items() if name in made)
        details.update(preview=not_produced_note(makers), preview_type=NOT_PRODUCED_PREVIEW)
        partial = path.with_name(f"{node_id}.partial")
        partial.write_text(json.dumps(details), encoding="utf-8")
        os.replace(partial, path)  # never a half-written file the page fails to read


def not_produced_note(makers: list[str]) -> str:
    """The preview of a dataset not produced yet: the `kedro run` of each pipeline in `makers` makes it."""
    if not makers:
        return "This dataset is not produced yet.\n\nNo pipeline makes it: it is an input to provide."
    runs = "".join(f"  kedro run --pipeline {maker}\n" for maker in makers)
    choice = " one of" if len(makers) > 1 else ""
    return f"This dataset is not produced yet.\n\nTo make it, run{choice}:\n{runs}then build the site again."
