"""Everything that knows about Kedro and MLflow: hooks, tracking, the run configuration, parameter docs."""
