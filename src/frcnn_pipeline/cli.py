"""The project's commands: Kedro's `run` with readable errors, and `viz-site`, an offline kedro-viz build.

Kedro picks up this module's `cli` group, and its `run` overrides the built-in one. Everything else (options,
session, runner) is Kedro's. A `UserFacingError` anywhere in the exception chain ends the run with its
message and the path of a log file holding the full traceback; `--verbose` shows the traceback instead.
Any other exception keeps its full traceback.
"""

from __future__ import annotations

import datetime
import difflib
import re
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
    # `--pipeline NAME` is the README's spelling; Kedro 1.7 deprecates it in favour of `--pipelines`.
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

    ctx.invoke(build, include_hooks=False, include_previews=include_previews)
    index = Path("build") / "index.html"
    if not index.is_file():
        raise click.ClickException("kedro viz build wrote no build/index.html; see its output above")
    click.echo(f"Offline site in build/ ({strip_remote_fonts(index)} remote font link(s) removed)")
