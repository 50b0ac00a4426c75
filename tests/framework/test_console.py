"""The run's console log off a terminal (frcnn_pipeline.framework.console)."""

import logging
import os

from rich.console import Console

from frcnn_pipeline.framework.console import widen_logs_off_terminal


def test_logs_widen_off_a_terminal(monkeypatch):
    handler = logging.StreamHandler()
    handler.console = Console(file=open(os.devnull, "w"), force_terminal=False)  # noqa: SIM115
    monkeypatch.delenv("COLUMNS", raising=False)
    monkeypatch.setattr(logging.getLogger(), "handlers", [handler])
    widen_logs_off_terminal(160)
    assert handler.console.width == 160
    handler.console.file.close()
