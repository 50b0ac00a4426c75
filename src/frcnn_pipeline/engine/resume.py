"""Resuming a run: whether it resumes, decided once before it starts, and the checks that its checkpoint
belongs to the same run, else the resume stops naming the change.

`decide_resume` decides where a training starts: from the newest checkpoint of `train.run_name` that loads,
or afresh. The run's configuration decides it once per run (frcnn_pipeline.framework.hooks) and hands the
same `ResumeDecision` to the trainer (`TrainJob.resume`) and to the MLflow hook, which continues the
checkpoint's MLflow run exactly when the training resumes that checkpoint.

The same `model:` config and class count, the same total batch (the scaled LR, the epoch length and the
schedule follow it; the number of workers may change), the same train data and solver. Raising `max_iter` or
`epochs` extends a run; `train.checkpoint.allow_data_change` / `allow_solver_change` accept other changes.
Every accepted change is returned, for the trainer to log and record. The decision checks what is known
before the run (what is None is left unchecked); the trainer checks again with the class count and the train
data it was given.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from frcnn_pipeline.config import ModelParams, SolverParams, TrainParams, flatten
from frcnn_pipeline.engine.checkpoint import CheckpointManager, NoReadableCheckpointError
from frcnn_pipeline.errors import UserFacingError

# A longer schedule continues a run; any other solver change would make it a different run.
_EXTENDABLE_SOLVER_KEYS = ("max_iter", "epochs")


class ResumeRefusedError(UserFacingError, ValueError):
    """The run's checkpoint was trained with another model, data, solver or total batch: resuming it would
    silently make a different run."""


@dataclass(frozen=True)
class ResumeDecision:
    """Where a training of `train.run_name` starts: from ``checkpoint``, or afresh (None).

    A ``refusal`` is the error the training stops with instead (another model, data or solver than the
    checkpoint's; checkpoints but resume switched off; none that loads). It is raised by the train node
    rather than when deciding, so that the refused attempt is tracked as an MLflow run of its own.
    """

    checkpoint: Path | None = None
    tracking_run_id: str | None = None  # the MLflow run the checkpoint was tracked in
    refusal: Exception | None = None

    @property
    def run_to_continue(self) -> str | None:
        """The MLflow run the training continues: the checkpoint's, when it resumes it (None: a new run)."""
        return self.tracking_run_id if self.checkpoint is not None and self.refusal is None else None


def decide_resume(
    train: TrainParams,
    model_cfg: ModelParams,
    *,
    world_size: int | None = None,
    data_fingerprint: str | None = None,
) -> ResumeDecision:
    """Where the training of ``train`` (the `train:` section) starts, checked with what is known before it
    runs (`check_resume`; the train data's ``data_fingerprint`` when it is stored already).

    Newer checkpoints that do not load are set aside (`CheckpointManager.load_latest`).
    """
    checkpoint = train.checkpoint
    manager = CheckpointManager(Path(checkpoint.dir) / train.run_name, checkpoint.keep_last)
    if not checkpoint.resume:
        found = manager.checkpoints()
        if not found:
            return ResumeDecision()
        # A fresh run would interleave its checkpoints with the old ones (keep_last prunes by number).
        refusal = FileExistsError(
            f"train.checkpoint.resume is false but {manager.directory} holds checkpoints of an earlier run "
            f"({found[-1].name}). Choose a new train.run_name, or delete that folder to retrain."
        )
        return ResumeDecision(refusal=refusal)
    try:
        latest, state = manager.load_latest(mmap=True)
    except NoReadableCheckpointError as error:
        return ResumeDecision(refusal=error)
    if latest is None:
        return ResumeDecision()
    try:
        check_resume(
            state,
            latest,
            model_cfg=model_cfg,
            train=train,
            world_size=world_size,
            data_fingerprint=data_fingerprint,
        )
    except ResumeRefusedError as error:
        return ResumeDecision(latest, state.get("tracking_run_id"), refusal=error)
    return ResumeDecision(latest, state.get("tracking_run_id"))


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
