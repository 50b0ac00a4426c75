"""Training (Kedro-free): the loop and its hooks, the solver, mixed precision, checkpoints and resuming, on
the process runtime of frcnn_pipeline.runtime."""
