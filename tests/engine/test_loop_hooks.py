"""Hooks of the training loop (engine/hooks.py; named apart from tests/framework/test_hooks.py, the Kedro
hooks' tests, as pytest imports test modules by file name): smoothed rows, evaluation every N iterations, the
best checkpoint, live MLflow tracking (into a tmp SQLite store) and what a resume continues."""

from __future__ import annotations

import logging
import re

import pytest
import torch
from mlflow import MlflowClient
from model_configs import model_params
from tiny_training import TINY_MODEL, runtime_config, train_config, train_from_parameters

from frcnn_pipeline.config import ParameterError
from frcnn_pipeline.engine.checkpoint import CheckpointManager, load_checkpoint
from frcnn_pipeline.engine.hooks import BEST_CHECKPOINT_NAME
from frcnn_pipeline.engine.metrics import MetricsWriter
from frcnn_pipeline.engine.tracking import TrackingTarget


class ScriptedEvaluator:
    """Returns the next AP of a script on each call; checks it is handed the training model as it is."""

    def __init__(self, aps: list[float]):
        self.aps = list(aps)
        self.calls = 0

    def __call__(self, model, context):
        assert model.training, "the evaluator gets the training model as it is (it builds its own copy)"
        ap = self.aps[self.calls]
        self.calls += 1
        return {"AP": ap, "AP50": min(1.0, 2 * ap), "AP75": ap / 2, "AR100": ap}


def _train(tmp_path, tables, name: str, max_iter: int, **kwargs):
    images, annotations = tables
    train = train_config(tmp_path, max_iter=max_iter)
    train.update(run_name=name, eval_period=kwargs.pop("eval_period", 0), best_metric="AP")
    train.update(kwargs.pop("train", {}))
    return train_from_parameters(images, annotations, 2, TINY_MODEL, train, runtime_config(), **kwargs)


@pytest.fixture(scope="module")
def tracking_store(module_tmp):
    """A local MLflow store with one experiment (SQLite, as the project's default)."""
    folder = module_tmp("mlflow")
    uri = f"sqlite:///{folder}/mlflow.db"
    client = MlflowClient(uri)
    experiment = client.create_experiment("hooks", artifact_location=(folder / "artifacts").as_uri())
    return uri, client, experiment


def test_rows_are_medians_over_the_window_and_time_only_the_steps(tmp_path):
    writer = MetricsWriter(
        tmp_path / "log.jsonl", period=3, images_per_iteration=4, start_iteration=0, max_iter=4, enabled=True
    )
    rows = [
        writer.step(i, {"loss_a": loss, "total_loss": loss}, 1e-3, 0.1, 0.5, lambda: 12.0)
        for i, loss in enumerate([1.0, 5.0, 2.0, 7.0])
    ]
    writer.close()
    assert rows[0] is None and rows[1] is None
    assert rows[2]["iteration"] == 3 and rows[2]["loss_a"] == 2.0  # median of 1, 5, 2; the mean would be 2.67
    assert rows[2]["images_per_s"] == 8.0 and rows[2]["data_time_s"] == 0.1  # 4 images / 0.5 s
    assert rows[3]["iteration"] == 4 and rows[3]["loss_a"] == 7.0  # the last iteration closes a window
    assert [r["iteration"] for r in writer.rows] == [3, 4]


def test_evaluation_every_period_and_at_the_end_keeps_the_best_checkpoint(tmp_path, tiny_tables):
    evaluator = ScriptedEvaluator([0.1, 0.3, 0.2])
    result = _train(tmp_path, tiny_tables, "eval", 5, eval_period=2, evaluator=evaluator)

    assert [row["iteration"] for row in result["evaluations"]] == [2, 4, 5]  # every 2, and the last one
    assert [row["AP"] for row in result["evaluations"]] == [0.1, 0.3, 0.2]
    best = result["record"]["best"]
    assert (best["metric"], best["value"], best["iteration"]) == ("AP", 0.3, 4)
    saved = torch.load(tmp_path / "checkpoints" / "eval" / BEST_CHECKPOINT_NAME, weights_only=True)
    assert (saved["iteration"], saved["value"]) == (4, 0.3)
    assert saved["model_config"] == model_params(TINY_MODEL).model_dump()  # as written
    for key, value in saved["model"].items():
        assert torch.equal(result["best_state_dict"][key], value)
    # The best model is not the final one: two more steps moved the weights.
    assert any(not torch.equal(result["state_dict"][k], v) for k, v in saved["model"].items())
    final = load_checkpoint(CheckpointManager(tmp_path / "checkpoints" / "eval").latest())
    assert final["evaluations"] == result["evaluations"] and final["best"] == best
    # The best checkpoint is not a periodic one: keep_last never prunes it.
    assert [p.name for p in CheckpointManager(tmp_path / "checkpoints" / "eval").checkpoints()] == [
        "model_0000005.pth"
    ]


def test_resume_continues_the_evaluations_and_the_best(tmp_path, tiny_tables):
    first = _train(tmp_path, tiny_tables, "resume", 4, eval_period=2, evaluator=ScriptedEvaluator([0.5, 0.2]))
    assert first["record"]["best"]["iteration"] == 2
    resumed = _train(tmp_path, tiny_tables, "resume", 6, eval_period=2, evaluator=ScriptedEvaluator([0.4]))
    assert [row["iteration"] for row in resumed["evaluations"]] == [2, 4, 6]
    assert resumed["record"]["best"]["iteration"] == 2, "0.4 at iteration 6 does not beat 0.5 at iteration 2"
    assert resumed["record"]["trained_iterations"] == 2


def test_without_evaluation_there_is_no_best_model(tmp_path, tiny_tables):
    result = _train(tmp_path, tiny_tables, "plain", 2)
    assert (
        result["evaluations"] == [] and result["best_state_dict"] == {} and result["record"]["best"] is None
    )
    assert not (tmp_path / "checkpoints" / "plain" / BEST_CHECKPOINT_NAME).exists()


def test_unknown_best_metric_names_the_key_and_the_choices(tmp_path, tiny_tables):
    with pytest.raises(ParameterError, match=r"train.best_metric: .*'AP', 'AP50'"):
        _train(tmp_path, tiny_tables, "bad", 2, eval_period=2, evaluator=ScriptedEvaluator([0.1]),
               train={"best_metric": "mAP"})  # fmt: skip


def test_a_best_metric_the_evaluator_does_not_report_names_the_key_and_the_choices(tmp_path, tiny_tables):
    with pytest.raises(KeyError, match=r"train.best_metric 'APs' is not an evaluation metric; choose one of"):
        _train(tmp_path, tiny_tables, "bad", 2, eval_period=2, evaluator=ScriptedEvaluator([0.1]),
               train={"best_metric": "APs"})  # fmt: skip


def _history(client: MlflowClient, run_id: str, key: str) -> list[tuple[int, float]]:
    return [(m.step, m.value) for m in client.get_metric_history(run_id, key)]


def test_rank_zero_logs_live_history_and_a_resume_appends_to_the_same_run(
    tmp_path, tiny_tables, tracking_store
):
    uri, client, experiment = tracking_store
    run_id = client.create_run(experiment).info.run_id
    target = TrackingTarget(uri, run_id)
    evaluator = ScriptedEvaluator([0.1, 0.2])
    first = _train(tmp_path, tiny_tables, "tracked", 3, eval_period=2, evaluator=evaluator, tracking=target)
    assert first["record"]["tracking_run_id"] == run_id
    assert load_checkpoint(CheckpointManager(tmp_path / "checkpoints" / "tracked").latest())[
        "tracking_run_id"
    ] == (run_id)
    losses = _history(client, run_id, "train/total_loss")
    assert [step for step, _ in losses] == [1, 2, 3]
    assert [value for _, value in losses] == pytest.approx([row["total_loss"] for row in first["metrics"]])
    assert _history(client, run_id, "val/AP") == [(2, 0.1), (3, 0.2)]
    metrics = client.get_run(run_id).data.metrics
    assert {
        "train/lr",
        "train/images_per_s",
        "train/data_time_s",
        "train/memory_mb",
        "val/AP50",
        "val/AP75",
    } <= set(metrics)
    tags = client.get_run(run_id).data.tags
    assert (tags["hardware.device"], tags["hardware.world_size"], tags["hardware.num_nodes"]) == (
        "cpu",
        "1",
        "1",
    )

    _train(tmp_path, tiny_tables, "tracked", 5, eval_period=2, evaluator=ScriptedEvaluator([0.3, 0.4]),
           tracking=target)  # fmt: skip
    assert [step for step, _ in _history(client, run_id, "train/total_loss")] == [1, 2, 3, 4, 5]
    assert _history(client, run_id, "val/AP") == [(2, 0.1), (3, 0.2), (4, 0.3), (5, 0.4)]


def test_a_checkpoint_tracked_elsewhere_brings_its_history_into_the_new_run(
    tmp_path, tiny_tables, tracking_store
):
    uri, client, experiment = tracking_store
    _train(tmp_path, tiny_tables, "moved", 2)  # tracking off
    run_id = client.create_run(experiment).info.run_id
    _train(tmp_path, tiny_tables, "moved", 3, tracking=TrackingTarget(uri, run_id))
    assert [step for step, _ in _history(client, run_id, "train/total_loss")] == [1, 2, 3]


def test_a_tracking_failure_is_logged_and_training_goes_on(tmp_path, tiny_tables, tracking_store, caplog):
    uri, _, _ = tracking_store
    with caplog.at_level(logging.WARNING):
        result = _train(tmp_path, tiny_tables, "lost", 2, tracking=TrackingTarget(uri, "0" * 32))
    assert result["record"]["trained_iterations"] == 2
    # One warning when the store first refuses, one at the end counting what it never took.
    first, at_end = [r.getMessage() for r in caplog.records if r.name == "frcnn_pipeline.engine.tracking"]
    assert "run 00000000" in first and "the store refused the tags" in first
    assert re.search(r"(\d+) of \1 batches of metrics and tags are not in run 00000000", at_end)
    assert "JSON-lines log" in at_end
