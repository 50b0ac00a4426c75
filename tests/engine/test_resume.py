"""What a resume may continue, on checkpoint states alone (tests/engine/test_trainer.py resumes for real)."""

from pathlib import Path

import pytest

from frcnn_pipeline.config import TrainParams
from frcnn_pipeline.engine.resume import ResumeRefusedError, check_resume
from frcnn_pipeline.errors import UserFacingError

CHECKPOINT = Path("checkpoints/demo/model_0000010.pth")
TRAIN = TrainParams.parse({"solver": {"max_iter": 20, "epochs": None}}, "train").model_dump()
MODEL = {"anchors": {"round": False}, "rpn": {}}


def _state(**changes) -> dict:
    solver = {**TRAIN["solver"], "max_iter": 10}
    state = {"model_config": MODEL, "num_classes": 2, "data_fingerprint": "a" * 64, "solver": solver}
    return {**state, **changes}


def test_a_longer_schedule_extends_a_run_and_a_shorter_one_is_refused():
    changes = check_resume(_state(), CHECKPOINT, model_cfg=MODEL, train_cfg=TRAIN, data_fingerprint="a" * 64)
    assert changes == ["solver.max_iter 10 -> 20"]
    longer = _state(solver={**TRAIN["solver"], "max_iter": 30})
    with pytest.raises(ResumeRefusedError, match=r"another solver \(solver\.max_iter 30 -> 20\)"):
        check_resume(longer, CHECKPOINT, model_cfg=MODEL, train_cfg=TRAIN)


def test_what_is_not_known_yet_is_not_checked():
    """Before a run reads its data (the MLflow hook), only the model config and the solver are checked."""
    state = _state()
    assert check_resume(state, CHECKPOINT, model_cfg=MODEL, train_cfg=TRAIN) == ["solver.max_iter 10 -> 20"]
    with pytest.raises(ResumeRefusedError, match=r"trained on other data"):
        check_resume(state, CHECKPOINT, model_cfg=MODEL, train_cfg=TRAIN, data_fingerprint="b" * 64)


def test_a_checkpoint_without_data_and_solver_records_is_resumed_and_says_so():
    state = {"model_config": MODEL, "num_classes": 2}
    assert check_resume(state, CHECKPOINT, model_cfg=MODEL, train_cfg=TRAIN) == [
        "not checked: the checkpoint predates data and solver records"
    ]


def test_another_model_names_the_changed_sections_in_a_short_error():
    other = {"anchors": {"round": True}, "rpn": {}}
    with pytest.raises(
        ResumeRefusedError, match=r"another model \(changed: anchors, num_classes 2 -> 3\)"
    ) as raised:
        check_resume(_state(), CHECKPOINT, model_cfg=other, train_cfg=TRAIN, num_classes=3)
    assert isinstance(raised.value, UserFacingError), "kedro run shows it in a few lines (cli.py)"
