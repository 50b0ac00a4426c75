"""The train pipeline: wiring, the per-env parameters, the npu env's clear error on a machine without NPUs,
what a rerun with nothing left to train returns."""

import sys

import pandas as pd
import pytest
import torch
from matplotlib.figure import Figure
from model_configs import model_params

from frcnn_pipeline.config import SECTIONS, EvaluateParams, ModelParams, RuntimeParams, TrainParams
from frcnn_pipeline.datasets import UNCHANGED
from frcnn_pipeline.engine.checkpoint import CheckpointManager, mark_outputs_saved
from frcnn_pipeline.engine.resume import ResumeDecision
from frcnn_pipeline.engine.solver import scaled_lr
from frcnn_pipeline.framework.parameter_docs import load_parameters, resolved_sections
from frcnn_pipeline.modeling.saved import INITIAL_WEIGHTS, SavedDetector
from frcnn_pipeline.pipelines.shape import PipelineShape
from frcnn_pipeline.pipelines.train import create_pipeline
from frcnn_pipeline.pipelines.train import nodes as train_nodes
from frcnn_pipeline.pipelines.train.nodes import metrics_table, plot_training_curves, train_model
from frcnn_pipeline.runtime.devices import DeviceUnavailableError
from frcnn_pipeline.runtime.world import WorldConfig


def test_pipeline_wiring():
    pipeline = create_pipeline()
    train = next(node for node in pipeline.nodes if node.name.endswith("train_detector"))
    assert train.inputs == ["train_images", "train_annotations", "categories", "initial_weights",
                            "val_images", "val_ground_truth",
                            "params:model", "params:train", "params:runtime", "params:evaluate",
                            "run_world", "run_resume"]  # fmt: skip
    outputs = ["trained_model", "best_model", "training_metrics", "training_run", "training_curves"]
    assert train.outputs == outputs and pipeline.all_outputs() == set(outputs)
    assert train.confirms == ["training_run"], "the record marks the outputs saved once all of them are"
    assert all("train" in node.tags for node in pipeline.nodes)


def test_evaluation_during_training_uses_the_first_evaluation_split():
    train = create_pipeline(PipelineShape(("valid", "test"))).nodes[0]
    assert train.inputs[4:6] == ["valid_images", "valid_ground_truth"]


@pytest.mark.parametrize(
    ("env", "period"),
    [("base", 300), ("cpu2p", 300), ("npu1p", 80000), ("npu8p", 10000), ("gpu1p", 80000), ("gpu8p", 10000)],
)
def test_evaluation_period_per_env(env, period):
    """The demo evaluates halfway and at the end; the card's envs every 160,000 training images."""
    train = resolved_sections(env)["train"]
    assert (train["eval_period"], train["best_metric"]) == (period, "AP")


@pytest.mark.parametrize(
    ("env", "device", "world", "optimizer", "lr"),
    [("base", "cpu", 1, "adamw", 1e-3), ("cpu2p", "cpu", 2, "adamw", 1e-3),
     ("npu1p", "npu", 1, "sgd", 0.0025), ("npu8p", "npu", 8, "sgd", 0.02), ("gpu8p", "cuda", 8, "sgd", 0.02)],
)  # fmt: skip
def test_env_recipes(env, device, world, optimizer, lr):
    parameters = resolved_sections(env)
    runtime, train = parameters["runtime"], parameters["train"]
    solver = train["solver"]
    assert (runtime["device"], runtime["nproc_per_node"], solver["optimizer"]) == (device, world, optimizer)
    total = train["images_per_device"] * world
    assert scaled_lr(solver["base_lr"], total, solver["reference_batch_size"]) == pytest.approx(lr)
    if device != "cpu":
        assert (
            train["images_per_device"] == 2 and solver["momentum"] == 0.9 and solver["weight_decay"] == 1e-4
        )
        assert (solver["warmup_iters"], solver["warmup_factor"], solver["epochs"]) == (1000, 0.001, 12)
        assert solver["step_epochs"] == [8, 11] and runtime["amp"]["enabled"]


@pytest.mark.parametrize("env", ["base", "cpu2p", "npu1p", "npu8p", "gpu1p", "gpu8p"])
def test_static_shapes_are_the_npu_default(env):
    model = model_params(load_parameters(env)["model"])
    on_npu = env.startswith("npu")
    assert model.static_shapes.enabled is on_npu
    if on_npu:  # every resized image fits the fixed size
        size_divisibility = model.input.size_divisibility
        padded_max = -(-model.input.max_size // size_divisibility) * size_divisibility
        assert model.input.fixed_size == [padded_max, padded_max] == [1344, 1344]


def test_npu8p_without_an_npu_fails_clearly_before_training(monkeypatch, tmp_path):
    monkeypatch.setitem(sys.modules, "torch_npu", None)  # as on this machine: torch_npu not installed
    parameters = load_parameters("npu8p")
    train = {**parameters["train"], "metrics_dir": str(tmp_path)}
    images = pd.DataFrame(
        {"image_id": [1], "file_name": ["x.jpg"], "path": ["x.jpg"], "width": [8], "height": [8]}
    )
    annotations = pd.DataFrame(columns=["image_id", "label", "x1", "y1", "x2", "y2", "iscrowd"])
    categories = pd.DataFrame({"label": [0], "category_id": [1], "name": ["a"], "supercategory": ["a"]})
    runtime = RuntimeParams.parse(parameters["runtime"], "runtime")
    with pytest.raises(
        DeviceUnavailableError, match=r"runtime.device is 'npu' but torch_npu cannot be imported"
    ):
        train_model(
            images, annotations, categories, SavedDetector({}, INITIAL_WEIGHTS), images, {},
            ModelParams.parse(parameters["model"], "model"), TrainParams.parse(train, "train"), runtime,
            EvaluateParams.parse(parameters["evaluate"], "evaluate"), WorldConfig.from_runtime(runtime, {}),
            ResumeDecision(), split="val",
        )  # fmt: skip
    assert not list(tmp_path.iterdir()), "nothing may be written before the device check"


def test_the_trained_and_best_models_carry_their_config_classes_and_provenance(monkeypatch):
    best = {"metric": "AP", "value": 0.5, "iteration": 2, "path": "ckpt/model_best.pth"}
    record = {
        "run_name": "demo", "iterations": 4, "resumed_from_iteration": 0, "trained_iterations": 4,
        "train_images": 2, "train_data_sha256": "f" * 64, "resume_changes": [],
        "last_checkpoint": "ckpt/model_0000004.pth", "tracking_run_id": None, "best": best, "world_size": 1,
    }  # fmt: skip
    weights, best_weights = {"w": torch.ones(2)}, {"w": torch.zeros(2)}
    result = {
        "state_dict": weights, "best_state_dict": best_weights, "metrics": [], "evaluations": [],
        "record": record,
    }  # fmt: skip
    monkeypatch.setattr(train_nodes, "train_detector", lambda *args, **kwargs: result)
    parameters = load_parameters("base")
    categories = pd.DataFrame(
        {"label": [1, 0], "category_id": [7, 3], "name": ["b", "a"], "supercategory": "s"}
    )
    initial = SavedDetector({}, INITIAL_WEIGHTS, provenance={"source": "none"}, origin={"sha256": "e" * 64})

    trained, best_model, _, returned, _ = train_model(
        pd.DataFrame(), pd.DataFrame(), categories, initial, pd.DataFrame({"path": [], "image_id": []}), {},
        *(SECTIONS[name].parse(parameters[name], name) for name in ("model", "train", "runtime", "evaluate")),
        WorldConfig(), ResumeDecision(), split="val",
    )  # fmt: skip

    assert returned is record and trained.kind == "trained_model" and trained.state_dict is weights
    assert trained.model_config == model_params(parameters["model"])
    assert trained.categories == [
        {"label": 0, "category_id": 3, "name": "a"}, {"label": 1, "category_id": 7, "name": "b"}
    ]  # fmt: skip
    assert trained.provenance["train_data_sha256"] == "f" * 64 and trained.provenance["run_name"] == "demo"
    assert trained.provenance["initial_weights"] == {"sha256": "e" * 64, "source": "none"}
    assert "world_size" not in trained.provenance  # the full record is training_run
    assert best_model.kind == "best_model" and best_model.state_dict is best_weights
    assert (best_model.model_config, best_model.categories) == (trained.model_config, trained.categories)
    assert best_model.provenance["best"] == {"metric": "AP", "value": 0.5, "iteration": 2}


def test_a_rerun_with_nothing_to_train_saves_nothing_only_once_every_output_was_saved(monkeypatch, tmp_path):
    checkpoint = CheckpointManager(tmp_path / "demo").save(4, {"iteration": 4})
    record = {
        "run_name": "demo", "iterations": 4, "resumed_from_iteration": 4, "trained_iterations": 0,
        "train_images": 2, "train_data_sha256": "f" * 64, "resume_changes": [],
        "last_checkpoint": str(checkpoint), "tracking_run_id": None, "best": None,
    }  # fmt: skip
    row = {"iteration": 4, "total_loss": 1.0, "lr": 1e-3, "images_per_s": 5.0}
    result = {
        "state_dict": {"w": torch.ones(2)}, "best_state_dict": {}, "metrics": [row], "evaluations": [],
        "record": record,
    }  # fmt: skip
    monkeypatch.setattr(train_nodes, "train_detector", lambda *args, **kwargs: result)
    parameters = load_parameters("base")
    train = {**parameters["train"], "eval_period": 0}
    categories = pd.DataFrame({"label": [0], "category_id": [1], "name": ["a"], "supercategory": "s"})
    initial = SavedDetector({}, INITIAL_WEIGHTS)

    def rerun():
        return train_model(
            pd.DataFrame(), pd.DataFrame(), categories, initial, pd.DataFrame(), {},
            ModelParams.parse(parameters["model"], "model"), TrainParams.parse(train, "train"),
            RuntimeParams.parse(parameters["runtime"], "runtime"),
            EvaluateParams.parse(parameters["evaluate"], "evaluate"), WorldConfig(), ResumeDecision(),
            split="val",
        )  # fmt: skip

    # An earlier save failed: every output again, from the checkpoint.
    trained, _, metrics, returned, _ = rerun()
    assert trained.state_dict is result["state_dict"] and returned is record and len(metrics) == 1
    mark_outputs_saved(checkpoint)
    assert rerun() == (UNCHANGED,) * 5


def test_training_curves_plot():
    metrics = pd.DataFrame(
        {"iteration": [20, 40], "loss_classifier": [1.0, 0.5], "loss_box_reg": [0.4, 0.3],
         "total_loss": [1.4, 0.8], "lr": [1e-4, 1e-3], "images_per_s": [5.0, 6.0]}
    )  # fmt: skip
    figure = plot_training_curves(metrics)
    assert isinstance(figure, Figure) and len(figure.axes) == 3
    assert len(figure.axes[0].lines) == 3


def test_training_curves_gain_the_ap_curve_with_evaluation_during_training():
    rows = [{"iteration": i, "loss_classifier": 1 / i, "total_loss": 2 / i, "lr": 1e-3, "images_per_s": 5.0}
            for i in (20, 40, 60)]  # fmt: skip
    evaluations = [{"iteration": 30, "AP": 0.1, "AP50": 0.3, "AP75": 0.05},
                   {"iteration": 60, "AP": 0.2, "AP50": 0.4, "AP75": 0.15}]  # fmt: skip
    table = metrics_table(rows, evaluations)
    assert table["iteration"].tolist() == [20, 30, 40, 60]
    assert table["AP"].isna().tolist() == [True, False, True, False]
    figure = plot_training_curves(table)
    assert len(figure.axes) == 4 and figure.axes[3].get_title() == "Validation box AP"
    ap_lines = {line.get_label(): line.get_ydata().tolist() for line in figure.axes[3].lines}
    assert ap_lines["AP"] == pytest.approx([10.0, 20.0])
    # Losses are drawn where they were logged, not broken by the evaluation rows in between.
    assert figure.axes[0].lines[0].get_xdata().tolist() == [20, 40, 60]
