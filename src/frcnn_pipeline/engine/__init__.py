"""Layer 4: devices, distribution, solver, mixed precision, checkpoints and the training loop (Kedro-free)."""
