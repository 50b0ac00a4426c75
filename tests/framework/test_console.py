"""The run's console and log file (frcnn_pipeline.framework.console)."""

import logging
import os
from pathlib import Path

from kedro_params import TINY_DEMO, cli_params
from rich.console import Console
from rich.logging import RichHandler
from test_cli import kedro_run

from frcnn_pipeline.console.detail import DETAIL
from frcnn_pipeline.framework.console import (
    RunLogFile,
    set_up_console,
    shown_on_console,
    summary_lines,
    widen_logs_off_terminal,
)


def test_logs_widen_off_a_terminal(monkeypatch):
    handler = logging.StreamHandler()
    handler.console = Console(file=open(os.devnull, "w"), force_terminal=False)  # noqa: SIM115
    monkeypatch.delenv("COLUMNS", raising=False)
    monkeypatch.setattr(logging.getLogger(), "handlers", [handler])
    widen_logs_off_terminal(160)
    assert handler.console.width == 160
    handler.console.file.close()


def record(name: str, level: int, msg: str = "message", **extra) -> logging.LogRecord:
    made = logging.LogRecord(name, level, __file__, 1, msg, None, None)
    made.__dict__.update(extra)
    return made


def test_the_console_shows_warnings_and_the_projects_lines_not_marked_detail():
    assert shown_on_console(record("frcnn_pipeline.engine.build", logging.INFO))
    assert not shown_on_console(record("frcnn_pipeline.engine.checkpoint", logging.INFO, **DETAIL))
    assert not shown_on_console(record("kedro.runner.sequential_runner", logging.INFO))
    assert shown_on_console(record("kedro.io.data_catalog", logging.WARNING))
    assert shown_on_console(record("frcnn_pipeline.engine.checkpoint", logging.WARNING, **DETAIL))
    # Kedro's node failure repeats the error the run ends with; the project's own line names the node.
    failed = "Node %s failed with error: \n%s"
    assert not shown_on_console(record("kedro.pipeline.node", logging.ERROR, failed))
    assert shown_on_console(record("kedro.pipeline.node", logging.ERROR, "Something else"))


def test_each_session_logs_to_a_new_file_and_filters_the_console_once(tmp_path, monkeypatch):
    console = RichHandler(console=Console(file=open(os.devnull, "w")))  # noqa: SIM115
    monkeypatch.setattr(logging.getLogger(), "handlers", [console])
    first = set_up_console(tmp_path)
    logging.getLogger("frcnn_pipeline.test").info("in the first run")
    second = set_up_console(tmp_path)
    logging.getLogger("frcnn_pipeline.test").info("in the second run", extra=DETAIL)
    assert console.filters == [shown_on_console]
    assert [type(h) for h in logging.getLogger().handlers] == [RichHandler, RunLogFile]
    logging.getLogger().handlers[-1].close()
    console.console.file.close()
    assert "in the first run" in Path(tmp_path / first.name).read_text()
    assert "in the second run" in Path(tmp_path / second.name).read_text()


def test_the_summary_says_where_each_output_went_in_a_few_lines():
    config = {
        "trained_model": {"type": "pickle.PickleDataset", "filepath": "data/06_models/trained_model.pt"},
        "training_run": {
            "type": "x.RunRecordDataset",
            "dataset": {"filepath": "data/08_reporting/train/run.json"},
        },
        **{
            f"evaluate.val.table_{i}": {"filepath": f"data/08_reporting/evaluate/val/table_{i}.csv"}
            for i in range(6)
        },
        "run_world": {"type": "MemoryDataset"},
    }
    saved = list(config)
    lines = summary_lines(
        65.0, 25, saved, config, "2026-12-07T12.00.00.000Z",
        {"val": {"AP": 0.77284, "AP50": 0.9455, "AP75": 0.9185}},
        "MLflow run demo (f32fa212) in sqlite:///data/09_tracking/mlflow.db", Path("logs/run_x.log"),
    )  # fmt: skip
    assert lines[0] == "Run complete in 1m05s: 25 nodes"
    assert "  box AP on val (%): AP 77.28  AP50 94.55  AP75 91.85" in lines
    assert "    data/06_models/  trained_model" in lines
    assert "    data/08_reporting/evaluate/  table_0, table_1, table_2, and 3 more" in lines
    assert "    data/08_reporting/train/  training_run" in lines
    assert lines[-1] == "  every line of this run: logs/run_x.log"
    assert not any("run_world" in line for line in lines)
    assert len(lines) <= 15


def test_the_default_run_shows_its_stages_results_and_a_summary_and_logs_every_line(project):
    """`kedro run` off a terminal (ingest, weights, train, evaluate on a tiny demo): each stage's closing line
    and the results once, no per-node or per-iteration line; those are in the run's log file."""
    root, _ = project
    tiny = {**TINY_DEMO, "train.solver.max_iter": 2, "train.eval_period": 1, "train.log_period": 1}
    result = kedro_run(root, "--params", cli_params(tiny))
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    console = (result.stdout + result.stderr).splitlines()
    shown = "\n".join(console)
    for detail in ("Running node", "Completed", "iter 1/2", "Saved checkpoint", "AP and AR per category"):
        assert detail not in shown, detail
    for once in ("train: 2 it in", "inference: 4 img in", "COCO box metrics (%)", "Run complete in"):
        assert shown.count(once) == 1, once
    assert shown.count("Evaluation at iteration") == 2 and "box AP on val (%)" in shown
    assert any(line.strip().startswith("data/06_models/  ") for line in console)
    assert len(console) <= 40, shown
    log_line = next(line for line in console if "every line of this run:" in line)
    logged = (root / log_line.split("every line of this run:")[1].split()[0]).read_text()
    for detail in (
        "Running node: validate_train_split",
        "iter 1/2",
        "Saved checkpoint",
        "AP and AR per category",
    ):
        assert detail in logged, detail
