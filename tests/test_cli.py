"""The project's `kedro run`: user-facing errors in a few lines, the traceback in a log file, bad names."""

import os
import subprocess
import sys
from pathlib import Path

from frcnn_pipeline.cli import user_facing_cause, write_traceback
from frcnn_pipeline.data.coco import CocoFormatError


def kedro_run(project: Path, *args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "KEDRO_DISABLE_TELEMETRY": "1"}
    env.pop("COLUMNS", None)
    return subprocess.run(
        [sys.executable, "-m", "kedro", "run", *args],
        cwd=project, env=env, capture_output=True, text=True, timeout=300, check=False,
    )  # fmt: skip


def test_user_facing_error_fits_on_a_screen_and_the_traceback_goes_to_a_log(project):
    root, coco = project
    result = kedro_run(root, "--pipeline", "ingest", "--params", f"ingest.data_root={coco}")
    assert result.returncode == 1
    lines = (result.stdout + result.stderr).rstrip().splitlines()
    failure = next(i for i, line in enumerate(lines) if "ERROR" in line)
    assert len(lines) - failure <= 15, "\n".join(lines[failure:])
    assert "Traceback" not in result.stdout + result.stderr
    assert lines[-2].startswith("Error: ") and "duplicate image ids [1]" in lines[-2] and "Fix:" in lines[-2]
    log_name = lines[-1].removeprefix("Full traceback: ").split()[0]
    logged = (root / log_name).read_text()
    assert "Traceback (most recent call last)" in logged and "CocoFormatError" in logged
    # Off a terminal, log lines are not wrapped at 80 columns.
    node_line = "ERROR    Node ingest.validate_train_split failed; every line of this run: logs/run_"
    assert any(node_line in line for line in lines)
    assert sum("duplicate image ids [1]" in line for line in lines) == 1, "the message once"

    verbose = kedro_run(root, "--pipeline", "ingest", "--params", f"ingest.data_root={coco}", "--verbose")
    assert verbose.returncode == 1 and "Traceback" in verbose.stdout + verbose.stderr
    assert len(list((root / "logs").glob("error_*.log"))) == 1, "--verbose shows the traceback, writes no log"


def test_misspelt_pipeline_lists_the_valid_names(project):
    root, _ = project
    result = kedro_run(root, "--pipeline", "ingset")
    assert result.returncode == 1
    output = result.stdout + result.stderr
    assert "No pipeline named 'ingset'. Did you mean 'ingest'?" in output
    names = (
        "evaluate, evaluate_best_model, evaluate_initial_weights, export, export_best_model, "
        "export_initial_weights, ingest, predict, predict_initial_weights, train, weights"
    )
    assert names in output
    assert len(output.splitlines()) <= 15 and "ImportError" not in output


def test_user_facing_cause_is_found_through_wrapping():
    try:
        try:
            raise CocoFormatError("f.json: bad. Fix: x")
        except CocoFormatError as inner:
            raise RuntimeError("wrapped by a dataset") from inner
    except RuntimeError as outer:
        assert isinstance(user_facing_cause(outer), CocoFormatError)
    assert user_facing_cause(KeyError("x")) is None


def test_traceback_logs_are_kept(tmp_path):
    first = write_traceback(ValueError("one"), tmp_path)
    second = write_traceback(ValueError("two"), tmp_path)
    assert first != second and "one" in first.read_text() and "two" in second.read_text()
