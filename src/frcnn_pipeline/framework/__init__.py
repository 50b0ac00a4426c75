"""Everything that knows about Kedro and MLflow: the project hooks, the run configuration, the tracking
integration, the config loader and the parameter docs generator.

MLflow starts its usage telemetry as `import mlflow` runs. The modules here import it, and settings.py
imports them before any plugin does: telemetry is switched off here, before any of them runs. Nothing
leaves the machine unless a remote tracking URI is configured.
"""

import os

os.environ["MLFLOW_DISABLE_TELEMETRY"] = "true"
