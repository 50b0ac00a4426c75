"""Progress of a long stage (frcnn_pipeline.console.progress): a bar on a terminal, plain lines off it."""

import io
import logging
import re

import pytest
from rich.console import Console
from rich.logging import RichHandler

from frcnn_pipeline.console.progress import LINE_INTERVAL_S, MAX_SILENCE_S, Progress, format_duration


class Clock:
    def __init__(self):
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def progress_lines(caplog) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name == "frcnn_pipeline.console.progress"]


def test_off_a_terminal_a_line_every_30_s_and_10_percent(caplog):
    caplog.set_level(logging.INFO)
    clock = Clock()
    with Progress("train", 1000, "it", clock=clock) as progress:
        for _ in range(1000):
            clock.now += 0.5  # 2 it/s: 10% (100 it) takes 50 s
            progress.update(loss="0.500")
    lines = progress_lines(caplog)
    # 500 s of work: a line each 100 iterations (50 s, past both thresholds), the closing line for the last.
    assert len(lines) == 10, lines
    assert lines[0] == "train: 100/1,000 it (10%), 2 it/s, eta 7m30s, loss 0.500"
    assert lines[-1] == "train: 1,000 it in 8m20s"


def test_off_a_terminal_a_fast_stage_prints_only_its_closing_line(caplog):
    caplog.set_level(logging.INFO)
    clock = Clock()
    with Progress("inference", 500, "img", clock=clock) as progress:
        for _ in range(500):
            clock.now += LINE_INTERVAL_S / 1000
            progress.update()
    assert progress_lines(caplog) == ["inference: 500 img in 0m15s"]


def test_off_a_terminal_a_slow_stage_still_speaks_every_10_minutes(caplog):
    caplog.set_level(logging.INFO)
    clock = Clock()
    progress = Progress("download", 10_000, "MiB", clock=clock)
    for _ in range(3):
        clock.now += MAX_SILENCE_S
        progress.update(1)  # far below 10% a step
    assert len(progress_lines(caplog)) == 3
    assert progress_lines(caplog)[0].startswith("download: 1/10,000 MiB (0%), 0.00167 MiB/s, eta ")


def test_a_stopped_stage_says_where_it_stopped(caplog):
    caplog.set_level(logging.INFO)
    clock = Clock()
    with pytest.raises(KeyboardInterrupt), Progress("train", 100, "it", clock=clock) as progress:
        clock.now += 10
        progress.update(25)
        raise KeyboardInterrupt
    assert progress_lines(caplog) == ["train: 25/100 it (25%), 2.5 it/s, eta 0m30s (stopped)"]


def test_a_disabled_progress_says_nothing(caplog):
    caplog.set_level(logging.INFO)
    with Progress("train", 10, enabled=False) as progress:
        progress.update(10)
    assert progress_lines(caplog) == []


@pytest.fixture
def terminal(monkeypatch):
    """The log's rich handler printing to a terminal (a buffer rich takes for one)."""
    console = Console(file=io.StringIO(), force_terminal=True, width=100)
    handler = RichHandler(console=console, show_time=False, show_path=False)
    monkeypatch.setattr(logging.getLogger(), "handlers", [handler])
    logging.getLogger("frcnn_pipeline").setLevel(logging.INFO)
    return console


def plain(console: Console) -> str:
    return re.sub(r"\x1b\[[0-9;?]*[a-zA-Z]", "", console.file.getvalue())


def test_on_a_terminal_log_lines_print_above_one_shared_bar(terminal):
    with Progress("train", 4, "it") as train:
        train.update(1, loss="1.0")
        with Progress("inference", 2, "img") as inference:  # a second stage shares the live display
            inference.update(2)
        logging.getLogger("frcnn_pipeline.test").info("Evaluation at iteration 1")
        train.update(3)
    output = plain(terminal)
    assert "Evaluation at iteration 1" in output and "inference: 2 img in" in output
    assert output.rstrip().splitlines()[-1].strip().startswith("INFO     train: 4 it in")
    assert "━" in output  # the bar was drawn


def test_the_closing_lines_come_once_on_a_terminal(terminal):
    with Progress("train", 3, "it") as progress:
        progress.update(3)
    assert plain(terminal).count("train: 3 it in") == 1


def test_durations_read_as_minutes_or_hours():
    assert format_duration(7.4) == "0m07s"
    assert format_duration(3 * 3600 + 125) == "3h02m"
