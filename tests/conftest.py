"""Shared test set-up: no telemetry, no network, small CPU work."""

import os

os.environ.setdefault("KEDRO_DISABLE_TELEMETRY", "1")
# Before anything imports mlflow (its telemetry client starts on import); settings.py does the same for runs.
os.environ["MLFLOW_DISABLE_TELEMETRY"] = "true"
os.environ.setdefault("OMP_NUM_THREADS", "2")
