"""What a resume may continue: a checkpoint of `train.run_name` continues only the same model, train data and
solver (a longer schedule extends a run; `train.checkpoint.allow_*` accept other changes, recorded).

The trainer checks a checkpoint before loading it; the MLflow hook (frcnn_pipeline.mlflow_hook) checks it
before a run starts, with what is known then, to continue the checkpoint's MLflow run only when the training
will continue the checkpoint.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from frcnn_pipeline.errors import UserFacingError


class ResumeRefusedError(UserFacingError, ValueError):
    """A checkpoint of `train.run_name` belongs to another model, train data or solver."""


# A longer schedule continues a run; any other solver change would make it a different run.
_EXTENDABLE_SOLVER_KEYS = ("max_iter", "epochs")


def check_resume(
    state: dict[str, Any],
    checkpoint: Path,
    *,
    model_cfg: dict[str, Any],
    train_cfg: dict[str, Any],
    num_classes: int | None = None,
    data_fingerprint: str | None = None,
) -> list[str]:
    """The changes a resume of ``checkpoint`` (its loaded ``state``) accepts, to log and record.

    ``model_cfg`` is resolved, ``train_cfg`` the validated ``train:`` section; ``num_classes`` and
    ``data_fingerprint`` (sha256 of the train tables) are left unchecked when None (not known yet).

    Raises:
        ResumeRefusedError: another model; other train data or another solver that `train.checkpoint.allow_*`
            does not accept (raising `max_iter`/`epochs` extends a run). Each names the change and the fix.
    """
    _check_same_model(state, model_cfg, num_classes, checkpoint)
    saved_fingerprint, saved_solver = state.get("data_fingerprint"), state.get("solver")
    if saved_fingerprint is None or saved_solver is None:
        return ["not checked: the checkpoint predates data and solver records"]
    allow = train_cfg["checkpoint"]

    def fix(key: str) -> str:
        return (
            f"Choose a new train.run_name, or delete {checkpoint.parent} to retrain, or set "
            f"train.checkpoint.{key}=true to continue this run anyway (recorded in training_run)."
        )

    changes = []
    if data_fingerprint is not None and saved_fingerprint != data_fingerprint:
        change = f"train data sha256 {saved_fingerprint[:12]}… -> {data_fingerprint[:12]}…"
        if not allow.get("allow_data_change", False):
            raise ResumeRefusedError(
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
        raise ResumeRefusedError(
            f"{checkpoint} was trained with another solver ({', '.join(changed)}); only raising max_iter or "
            f"epochs extends a run. {fix('allow_solver_change')}"
        )
    return changes + extended + changed


def _check_same_model(
    state: dict[str, Any], model_cfg: dict[str, Any], num_classes: int | None, checkpoint: Path
) -> None:
    """Resuming must not silently continue another model's run under the same run_name."""
    saved_cfg, saved_classes = state["model_config"], state["num_classes"]
    changed = sorted(key for key in {*saved_cfg, *model_cfg} if saved_cfg.get(key) != model_cfg.get(key))
    if num_classes is not None and saved_classes != num_classes:
        changed.append(f"num_classes {saved_classes} -> {num_classes}")
    if changed:
        raise ResumeRefusedError(
            f"{checkpoint} was trained with another model (changed: {', '.join(changed)}), so this run "
            "cannot resume it. Choose a new train.run_name to train this model, or delete that checkpoint "
            "folder."
        )
