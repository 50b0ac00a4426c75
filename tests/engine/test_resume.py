"""Resume checks: through real (tiny) trainings, another model, total batch, data or solver stops the resume
naming the change and the fix, and the accepted changes continue the run and are recorded; a truncated latest
checkpoint is skipped, and none that loads stops the run; on checkpoint states alone, what is not known yet
(before a run reads its data: the MLflow hook) is not checked."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest
import torch
from model_configs import model_params
from tiny_training import (
    ALL_SAMPLES_MODEL,
    TINY_MODEL,
    merged,
    runtime_config,
    train_config,
    train_from_parameters,
    write_tiny_dataset,
)

from frcnn_pipeline.config import TrainParams
from frcnn_pipeline.engine.checkpoint import CheckpointManager, NoReadableCheckpointError
from frcnn_pipeline.engine.resume import ResumeRefusedError, check_resume
from frcnn_pipeline.errors import UserFacingError


def test_resume_refuses_a_checkpoint_of_another_model(tmp_path, tiny_tables):
    images, annotations = tiny_tables
    train = train_config(tmp_path, max_iter=1)
    train_from_parameters(images, annotations, 2, TINY_MODEL, train, runtime_config())
    train["solver"]["max_iter"] = 2
    other_anchors = merged(TINY_MODEL, anchors={"round": True})
    with pytest.raises(
        ResumeRefusedError, match=r"model_0000001\.pth was trained with another model \(changed: anchors\)"
    ):
        train_from_parameters(images, annotations, 2, other_anchors, train, runtime_config())
    with pytest.raises(ResumeRefusedError, match=r"changed: num_classes 2 -> 3"):
        train_from_parameters(images, annotations, 3, TINY_MODEL, train, runtime_config())
    assert CheckpointManager(tmp_path / "checkpoints" / "test", 2).latest().name == "model_0000001.pth"


def test_resume_refuses_other_train_data_unless_allowed(tmp_path, tiny_tables):
    images, annotations = tiny_tables
    train = train_config(tmp_path, max_iter=1)
    first = train_from_parameters(images, annotations, 2, TINY_MODEL, train, runtime_config())
    train["solver"]["max_iter"] = 2
    moved = annotations.assign(x2=annotations["x2"] - 1.0)  # re-ingested: one pixel off
    with pytest.raises(
        ResumeRefusedError,
        match=r"model_0000001\.pth was trained on other data \(train data sha256 .* -> .*\).*new "
        r"train\.run_name.*delete .*allow_data_change=true",
    ):
        train_from_parameters(images, moved, 2, TINY_MODEL, train, runtime_config())

    train["checkpoint"]["allow_data_change"] = True
    resumed = train_from_parameters(images, moved, 2, TINY_MODEL, train, runtime_config())
    changes = [entry["change"] for entry in resumed["record"]["resume_changes"]]
    assert changes[0].startswith("train data sha256") and changes[1] == "solver.max_iter 1 -> 2"
    assert resumed["record"]["train_data_sha256"] != first["record"]["train_data_sha256"]


def test_resume_refuses_another_solver_except_a_longer_schedule(tmp_path, tiny_tables):
    images, annotations = tiny_tables
    train = train_config(tmp_path, max_iter=2)
    train_from_parameters(images, annotations, 2, TINY_MODEL, train, runtime_config())
    train["solver"].update(base_lr=2e-3, max_iter=3)
    with pytest.raises(
        ResumeRefusedError,
        match=r"model_0000002\.pth was trained with another solver \(solver\.base_lr 0\.001 -> 0\.002\); "
        r"only raising max_iter or epochs extends a run.*allow_solver_change=true",
    ):
        train_from_parameters(images, annotations, 2, TINY_MODEL, train, runtime_config())
    train["solver"].update(base_lr=1e-3, max_iter=1)
    with pytest.raises(ResumeRefusedError, match=r"solver\.max_iter 2 -> 1"):
        train_from_parameters(images, annotations, 2, TINY_MODEL, train, runtime_config())
    train["solver"].update(base_lr=2e-3, max_iter=3)
    train["checkpoint"]["allow_solver_change"] = True
    resumed = train_from_parameters(images, annotations, 2, TINY_MODEL, train, runtime_config())
    assert [c["change"] for c in resumed["record"]["resume_changes"]] == [
        "solver.max_iter 2 -> 3",
        "solver.base_lr 0.001 -> 0.002",
    ]


def _truncate(path: Path) -> None:
    """Cut the file in half, as a copy or a disk that stopped midway would leave it."""
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


def test_a_truncated_latest_checkpoint_is_skipped_and_the_run_resumes_from_the_one_before(
    tmp_path, tiny_tables, caplog
):
    images, annotations = tiny_tables
    train = train_config(tmp_path, max_iter=2)
    train["checkpoint"]["period"] = 1
    train_from_parameters(images, annotations, 2, TINY_MODEL, train, runtime_config())
    folder = tmp_path / "checkpoints" / "test"
    _truncate(folder / "model_0000002.pth")

    with caplog.at_level(logging.WARNING, logger="frcnn_pipeline.engine.checkpoint"):
        resumed = train_from_parameters(images, annotations, 2, TINY_MODEL, train, runtime_config())

    record = resumed["record"]
    assert (record["resumed_from_iteration"], record["trained_iterations"]) == (1, 1)
    checkpoint_warnings = [
        r.getMessage()
        for r in caplog.records
        if r.name == "frcnn_pipeline.engine.checkpoint" and r.levelno >= logging.WARNING
    ]
    assert checkpoint_warnings == [
        f"Skipped checkpoint {folder / 'model_0000002.pth'}, which does not load (not a complete zip archive "
        "(truncated or corrupt)): resuming from model_0000001.pth; the file is kept as "
        "model_0000002.pth.unreadable"
    ]
    # Iteration 2 trained again and saved afresh beside the set-aside file.
    assert sorted(p.name for p in folder.glob("model_*")) == [
        "model_0000001.pth",
        "model_0000002.pth",
        "model_0000002.pth.unreadable",
    ]
    assert CheckpointManager(folder).load_latest()[1]["iteration"] == 2


def test_no_checkpoint_that_loads_stops_before_training_naming_the_folder(tmp_path, tiny_tables):
    images, annotations = tiny_tables
    train = train_config(tmp_path, max_iter=1)
    train_from_parameters(images, annotations, 2, TINY_MODEL, train, runtime_config())
    folder = tmp_path / "checkpoints" / "test"
    _truncate(folder / "model_0000001.pth")
    before = sorted(p.name for p in folder.iterdir())

    train["solver"]["max_iter"] = 2
    with pytest.raises(NoReadableCheckpointError) as raised:
        train_from_parameters(images, annotations, 2, TINY_MODEL, train, runtime_config())

    assert isinstance(raised.value, UserFacingError)
    assert str(raised.value) == (
        f"No checkpoint in {folder} loads (model_0000001.pth; the newest: not a complete zip archive "
        "(truncated or corrupt)). Delete that folder to train this run afresh, or choose a new "
        "train.run_name."
    )
    assert sorted(p.name for p in folder.iterdir()) == before, "nothing trained, nothing renamed"


def test_resume_on_another_world_size_keeps_the_total_batch_or_says_how(tmp_path):
    images, annotations = write_tiny_dataset(tmp_path / "images", count=4, boxes_per_image=2, seed=5)
    train = train_config(tmp_path, optimizer="sgd", base_lr=0.05, max_iter=2, warmup_iters=0, steps=[])
    train.update(run_name="resize", images_per_device=2, flip_prob=0.0)
    train["checkpoint"]["period"] = 1
    train_from_parameters(images, annotations, 2, ALL_SAMPLES_MODEL, train, runtime_config(num_threads=1))

    # 1 worker × 2 images -> 2 workers × 1 image: the same total batch, so the same schedule; it continues.
    train["solver"]["max_iter"], train["images_per_device"] = 3, 1
    resumed = train_from_parameters(
        images, annotations, 2, ALL_SAMPLES_MODEL, train, runtime_config(nproc_per_node=2, num_threads=1)
    )
    assert resumed["record"]["resumed_from_iteration"] == 2 and resumed["record"]["total_batch"] == 2
    assert [c["change"] for c in resumed["record"]["resume_changes"]] == [
        "world size 1 -> 2 with the same total batch 2: the schedule is unchanged; per-rank random streams "
        "are reseeded",
        "solver.max_iter 2 -> 3",
    ]
    straight = {**train, "run_name": "straight", "images_per_device": 2}
    reference = train_from_parameters(
        images, annotations, 2, ALL_SAMPLES_MODEL, straight, runtime_config(num_threads=1)
    )
    for key, value in reference["state_dict"].items():
        torch.testing.assert_close(resumed["state_dict"][key], value, rtol=1e-4, atol=1e-6, msg=key)

    # 2 workers × 2 images: the total batch (so the LR and the schedule) would change mid-run.
    train["solver"]["max_iter"], train["images_per_device"] = 4, 2
    changed = r"total batch of 2 \(2 worker\(s\) × 1\) but this run has 4 \(2 × 2\)"
    with pytest.raises(
        ResumeRefusedError, match=changed + r".*set train\.images_per_device=1 for these 2 worker\(s\)"
    ):
        train_from_parameters(
            images, annotations, 2, ALL_SAMPLES_MODEL, train, runtime_config(nproc_per_node=2)
        )
    assert CheckpointManager(tmp_path / "checkpoints" / "resize").latest().name == "model_0000003.pth"


def test_sixteen_devices_then_eight_names_the_images_per_device_that_keeps_the_total_batch(tmp_path):
    model = model_params(TINY_MODEL)
    state = {"model_config": model.model_dump(), "num_classes": 2, "world_size": 16, "total_batch": 16}
    others = {"model_cfg": model, "num_classes": 2, "data_fingerprint": "x"}
    train = {**train_config(tmp_path), "images_per_device": 1}
    checkpoint = tmp_path / "model_0000100.pth"
    with pytest.raises(
        ResumeRefusedError,
        match=r"total batch of 16 \(16 worker\(s\) × 1\) but this run has 8 \(8 × 1\).*"
        r"set train\.images_per_device=2 for these 8 worker\(s\) or run on 16 worker\(s\) again",
    ):
        check_resume(state, checkpoint, world_size=8, train=TrainParams.parse(train, "train"), **others)
    train["images_per_device"] = 2
    assert check_resume(
        state, checkpoint, world_size=8, train=TrainParams.parse(train, "train"), **others
    ) == [
        "world size 16 -> 8 with the same total batch 16: the schedule is unchanged; per-rank random streams "
        "are reseeded",
        "not checked: the checkpoint predates data and solver records",
    ]


CHECKPOINT = Path("checkpoints/demo/model_0000010.pth")
TRAIN = TrainParams.parse({"solver": {"max_iter": 20, "epochs": None}}, "train")
SOLVER = TRAIN.solver.model_dump()  # as a checkpoint keeps it
MODEL = model_params({"anchors": {"round": False}, "rpn": {}})


def _state(**changes) -> dict:
    solver = {**SOLVER, "max_iter": 10}
    state = {
        "model_config": MODEL.model_dump(),
        "num_classes": 2,
        "data_fingerprint": "a" * 64,
        "solver": solver,
    }
    return {**state, **changes}


def test_a_longer_schedule_extends_a_run_and_a_shorter_one_is_refused():
    changes = check_resume(_state(), CHECKPOINT, model_cfg=MODEL, train=TRAIN, data_fingerprint="a" * 64)
    assert changes == ["solver.max_iter 10 -> 20"]
    longer = _state(solver={**SOLVER, "max_iter": 30})
    with pytest.raises(ValueError, match=r"another solver \(solver\.max_iter 30 -> 20\)"):
        check_resume(longer, CHECKPOINT, model_cfg=MODEL, train=TRAIN)


def test_what_is_not_known_yet_is_not_checked():
    """Before a run reads its data (the MLflow hook), only the model config and the solver are checked."""
    state = _state()
    assert check_resume(state, CHECKPOINT, model_cfg=MODEL, train=TRAIN) == ["solver.max_iter 10 -> 20"]
    with pytest.raises(ValueError, match=r"trained on other data"):
        check_resume(state, CHECKPOINT, model_cfg=MODEL, train=TRAIN, data_fingerprint="b" * 64)


def test_a_checkpoint_without_data_and_solver_records_is_resumed_and_says_so():
    state = {"model_config": MODEL.model_dump(), "num_classes": 2}
    assert check_resume(state, CHECKPOINT, model_cfg=MODEL, train=TRAIN) == [
        "not checked: the checkpoint predates data and solver records"
    ]


def test_another_model_names_the_changed_sections():
    other = model_params({"anchors": {"round": True}, "rpn": {}})
    with pytest.raises(ValueError, match=r"another model \(changed: anchors, num_classes 2 -> 3\)"):
        check_resume(_state(), CHECKPOINT, model_cfg=other, train=TRAIN, num_classes=3)
