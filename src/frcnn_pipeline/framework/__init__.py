"""Everything that knows about Kedro and MLflow: the project hooks, the tracking integration and the
parameter docs generator."""
