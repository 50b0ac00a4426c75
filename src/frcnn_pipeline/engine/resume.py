"""Resuming a run: its latest checkpoint must belong to the same run, else the resume stops naming the change.

The same `model:` config and class count, the same total batch (the scaled LR, the epoch length and the
schedule follow it; the number of workers may change), the same train data and solver. Raising `max_iter` or
`epochs` extends a run; `train.checkpoint.allow_data_change` / `allow_solver_change` accept other changes.
Every accepted change is returned, for the trainer to log and record.

The trainer checks a checkpoint before loading it; the MLflow hook (frcnn_pipeline.framework.mlflow_hook)
checks it before a run starts, with what is known then (what is None is left unchecked), to continue the
checkpoint's MLflow run only when the training will continue the checkpoint.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from frcnn_pipeline.config import ModelParams, SolverParams, TrainParams, flatten
from frcnn_pipeline.errors import UserFacingError

# A longer schedule continues a run; any other solver change would make it a different run.
_EXTENDABLE_SOLVER_KEYS = ("max_iter", "epochs")


class ResumeRefusedError(UserFacingError, ValueError):
    """The run's checkpoint was trained with another model, data, solver or total batch: resuming it would
    silently make a different run."""


def check_resume(
    state: dict[str, Any],
    checkpoint: Path,
    *,
    model_cfg: ModelParams,
    train: TrainParams,
    num_classes: int | None = None,
    world_size: int | None = None,
    data_fingerprint: str | None = None,
) -> list[str]:
    """The accepted changes between `state` (the checkpoint at `checkpoint`) and this run.

    ``model_cfg`` is the ``model:`` section, ``train`` the ``train:`` section; ``num_classes``,
    ``world_size`` and ``data_fingerprint`` (sha256 of the train tables) are left unchecked when None.

    Raises:
        ResumeRefusedError: another model, another total batch, or a data or solver change not allowed.
    """
    _check_same_model(state, model_cfg, num_classes, checkpoint)
    batch = (
        []
        if world_size is None
        else _check_same_total_batch(state, world_size, train.images_per_device, checkpoint)
    )
    return [
        *batch,
        *_check_same_data_and_solver(state, train, data_fingerprint, checkpoint),
    ]


def _check_same_model(
    state: dict[str, Any], model_cfg: ModelParams, num_classes: int | None, checkpoint: Path
) -> None:
    """Resuming must not silently continue another model's run under the same run_name."""
    saved, current = flatten(state["model_config"]), model_cfg.flat()
    changed = sorted({key.split(".")[0] for key in {*saved, *current} if saved.get(key) != current.get(key)})
    saved_classes = state["num_classes"]
    if num_classes is not None and saved_classes != num_classes:
        changed.append(f"num_classes {saved_classes} -> {num_classes}")
    if not changed:
        return
    raise ResumeRefusedError(
        f"{checkpoint} was trained with another model (changed: {', '.join(changed)}), so this run cannot "
        "resume it. Choose a new train.run_name to train this model, or delete that checkpoint folder."
    )


def _check_same_total_batch(
    state: dict[str, Any], world_size: int, per_device: int, checkpoint: Path
) -> list[str]:
    """Resuming on another world size keeps the total batch: the LR, epoch length and schedule follow it.

    Returns the accepted change (another world size with the same total batch).
    """
    # Checkpoints written before total_batch was recorded: the same images_per_device is assumed.
    saved_world = state["world_size"]
    saved_total = state.get("total_batch", saved_world * per_device)
    total = per_device * world_size
    if saved_total == total:
        if saved_world == world_size:
            return []
        return [
            f"world size {saved_world} -> {world_size} with the same total batch {total}: the "
            "schedule is unchanged; per-rank random streams are reseeded"
        ]
    keep = [f"run on {saved_world} worker(s) again"]
    if saved_total % world_size == 0:
        keep.insert(0, f"set train.images_per_device={saved_total // world_size} for these "
                       f"{world_size} worker(s)")  # fmt: skip
    raise ResumeRefusedError(
        f"{checkpoint} was trained with a total batch of {saved_total} ({saved_world} worker(s) × "
        f"{saved_total // saved_world}) but this run has {total} ({world_size} × {per_device}): the "
        "learning rate (scaled with the total batch), the epoch length and the schedule would change "
        f"mid-run. To continue it, keep the total batch: {' or '.join(keep)}. To train with the new total "
        "batch, choose a new train.run_name."
    )


def _check_same_data_and_solver(
    state: dict[str, Any], train: TrainParams, data_fingerprint: str | None, checkpoint: Path
) -> list[str]:
    """Resuming must continue on the same data and solver; returns the accepted changes.

    Raising `max_iter`/`epochs` extends a run. A different train split or another solver change is an
    error unless `train.checkpoint.allow_data_change` / `allow_solver_change` accepts it.
    """
    allow = train.checkpoint

    def fix(key: str) -> str:
        return (
            f"Choose a new train.run_name, or delete {checkpoint.parent} to retrain, or set "
            f"train.checkpoint.{key}=true to continue this run anyway (recorded in training_run)."
        )

    saved_fingerprint, saved_solver = state.get("data_fingerprint"), state.get("solver")
    if saved_fingerprint is None or saved_solver is None:
        return ["not checked: the checkpoint predates data and solver records"]
    changes = []
    if data_fingerprint is not None and saved_fingerprint != data_fingerprint:
        change = f"train data sha256 {saved_fingerprint[:12]}… -> {data_fingerprint[:12]}…"
        if not allow.allow_data_change:
            raise ResumeRefusedError(
                f"{checkpoint} was trained on other data ({change}: the train split was re-ingested or "
                f"changed), so resuming would mix two datasets in one run. {fix('allow_data_change')}"
            )
        changes.append(change)
    extended, changed = [], []
    for key in sorted({*saved_solver, *SolverParams.model_fields}):
        old, new = saved_solver.get(key), getattr(train.solver, key, None)
        if old != new:
            longer = key in _EXTENDABLE_SOLVER_KEYS and old is not None and new is not None and new > old
            (extended if longer else changed).append(f"solver.{key} {old!r} -> {new!r}")
    if changed and not allow.allow_solver_change:
        raise ResumeRefusedError(
            f"{checkpoint} was trained with another solver ({', '.join(changed)}); only raising max_iter or "
            f"epochs extends a run. {fix('allow_solver_change')}"
        )
    return changes + extended + changed
