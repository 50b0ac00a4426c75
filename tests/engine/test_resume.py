"""What a resume may continue, on checkpoint states alone (tests/engine/test_trainer.py resumes for real)."""

from pathlib import Path

import pytest

from frcnn_pipeline.config import TrainParams
from frcnn_pipeline.engine.resume import check_same_data_and_solver, check_same_model

CHECKPOINT = Path("checkpoints/demo/model_0000010.pth")
TRAIN = TrainParams.parse({"solver": {"max_iter": 20, "epochs": None}}, "train").model_dump()


def test_a_longer_schedule_extends_a_run_and_a_shorter_one_is_refused():
    state = {"data_fingerprint": "a" * 64, "solver": {**TRAIN["solver"], "max_iter": 10}}
    assert check_same_data_and_solver(state, TRAIN, "a" * 64, CHECKPOINT) == ["solver.max_iter 10 -> 20"]
    state["solver"]["max_iter"] = 30
    with pytest.raises(ValueError, match=r"another solver \(solver\.max_iter 30 -> 20\)"):
        check_same_data_and_solver(state, TRAIN, "a" * 64, CHECKPOINT)


def test_a_checkpoint_without_data_and_solver_records_is_resumed_and_says_so():
    assert check_same_data_and_solver({}, TRAIN, "a" * 64, CHECKPOINT) == [
        "not checked: the checkpoint predates data and solver records"
    ]


def test_another_model_names_the_changed_sections():
    state = {"model_config": {"anchors": {"round": False}, "rpn": {}}, "num_classes": 2}
    check_same_model(state, {"anchors": {"round": False}, "rpn": {}}, 2, CHECKPOINT)
    with pytest.raises(ValueError, match=r"another model \(changed: anchors, num_classes 2 -> 3\)"):
        check_same_model(state, {"anchors": {"round": True}, "rpn": {}}, 3, CHECKPOINT)
