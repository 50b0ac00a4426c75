"""What a resume may continue: a checkpoint of `train.run_name` continues only the same model, train data and
solver (a longer schedule extends a run; `train.checkpoint.allow_*` accept other changes, recorded)."""

from __future__ import annotations

from pathlib import Path
from typing import Any


def check_same_model(
    state: dict[str, Any], model_cfg: dict[str, Any], num_classes: int, checkpoint: Path
) -> None:
    """Resuming must not silently continue another model's run under the same run_name."""
    saved_cfg, saved_classes = state["model_config"], state["num_classes"]
    if (saved_cfg, saved_classes) == (model_cfg, num_classes):
        return
    changed = sorted(key for key in {*saved_cfg, *model_cfg} if saved_cfg.get(key) != model_cfg.get(key))
    if saved_classes != num_classes:
        changed.append(f"num_classes {saved_classes} -> {num_classes}")
    raise ValueError(
        f"{checkpoint} was trained with another model (changed: {', '.join(changed)}), so this run cannot "
        "resume it. Choose a new train.run_name to train this model, or delete that checkpoint folder."
    )


# A longer schedule continues a run; any other solver change would make it a different run.
_EXTENDABLE_SOLVER_KEYS = ("max_iter", "epochs")


def check_same_data_and_solver(
    state: dict[str, Any], train_cfg: dict[str, Any], data_fingerprint: str, checkpoint: Path
) -> list[str]:
    """Resuming must continue on the same data and solver; returns the accepted changes (to log and record).

    Raising `max_iter`/`epochs` extends a run. A different train split or another solver change is an
    error unless `train.checkpoint.allow_data_change` / `allow_solver_change` accepts it.
    """
    allow = train_cfg["checkpoint"]

    def fix(key: str) -> str:
        return (
            f"Choose a new train.run_name, or delete {checkpoint.parent} to retrain, or set "
            f"train.checkpoint.{key}=true to continue this run anyway (recorded in training_run)."
        )

    saved_fingerprint, saved_solver = state.get("data_fingerprint"), state.get("solver")
    if saved_fingerprint is None or saved_solver is None:
        return ["not checked: the checkpoint predates data and solver records"]
    changes = []
    if saved_fingerprint != data_fingerprint:
        change = f"train data sha256 {saved_fingerprint[:12]}… -> {data_fingerprint[:12]}…"
        if not allow.get("allow_data_change", False):
            raise ValueError(
                f"{checkpoint} was trained on other data ({change}: the train split was re-ingested or "
                f"changed), so resuming would mix two datasets in one run. {fix('allow_data_change')}"
            )
        changes.append(change)
    solver_cfg = train_cfg["solver"]
    extended, changed = [], []
    for key in sorted({*saved_solver, *solver_cfg}):
        old, new = saved_solver.get(key), solver_cfg.get(key)
        if old != new:
            longer = key in _EXTENDABLE_SOLVER_KEYS and old is not None and new is not None and new > old
            (extended if longer else changed).append(f"solver.{key} {old!r} -> {new!r}")
    if changed and not allow.get("allow_solver_change", False):
        raise ValueError(
            f"{checkpoint} was trained with another solver ({', '.join(changed)}); only raising max_iter or "
            f"epochs extends a run. {fix('allow_solver_change')}"
        )
    return changes + extended + changed
