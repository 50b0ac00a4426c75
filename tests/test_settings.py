"""Importing the project's settings only defines them; MLflow's telemetry is off before mlflow is imported."""

import json
import os
import subprocess
import sys
from pathlib import Path

PROJECT = Path(__file__).resolve().parents[1]
# Variables by which MLflow decides on its own that it runs in CI or a test (and sends nothing).
CI_VARIABLES = ("CI", "PYTEST_CURRENT_TEST", "GITHUB_ACTIONS", "MLFLOW_DISABLE_TELEMETRY", "DO_NOT_TRACK")
SCRIPT = """
import json, logging, os, sys, warnings
from rich.console import Console
from rich.logging import RichHandler

handler = RichHandler(console=Console(file=sys.stderr, force_terminal=False, width=80))
logging.getLogger().addHandler(handler)
env = dict(os.environ)
import frcnn_pipeline.settings as settings
from mlflow.telemetry.client import get_telemetry_client

print(json.dumps({
    # torch._dynamo, imported on the way, sets TORCHINDUCTOR_CACHE_DIR: torch's own, not the project's.
    "env": sorted(
        key
        for key in {*env, *os.environ}
        if env.get(key) != os.environ.get(key) and not key.startswith("TORCH")
    ),
    "filters": [f[1].pattern for f in warnings.filters if f[1] is not None and "resolver" in f[1].pattern],
    "width": handler.console.width,
    "telemetry": repr(get_telemetry_client()),
    "hooks": len(settings.HOOKS),
}))
"""


def test_importing_settings_defines_them_and_switches_mlflow_telemetry_off_before_mlflow_loads():
    env = {key: value for key, value in os.environ.items() if key not in CI_VARIABLES}
    env.pop("COLUMNS", None)
    result = subprocess.run(
        [sys.executable, "-c", SCRIPT], cwd=PROJECT, env=env, capture_output=True, text=True, timeout=300,
        check=False,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    seen = json.loads(result.stdout.splitlines()[-1])
    # frcnn_pipeline.framework switches telemetry off before its modules import mlflow; nothing else changes.
    assert seen["env"] == ["MLFLOW_DISABLE_TELEMETRY"]
    assert seen["telemetry"] == "None"
    assert seen["filters"] == [], "no process-wide warning filter"
    assert seen["width"] == 80, "the console is widened by a hook as a run starts, not on import"
    assert seen["hooks"], "the hooks are defined"
