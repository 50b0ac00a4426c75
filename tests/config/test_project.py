"""All sections together; the defaults that other layers take from the schema."""

import pytest

from frcnn_pipeline.config import (
    SECTIONS,
    ModelParams,
    ParameterError,
    RuntimeParams,
    SeverityParams,
    TrainParams,
    WeightsParams,
    all_schema_keys,
    flatten,
    validate_parameters,
)
from frcnn_pipeline.data.coco import DEFAULT_SEVERITY, resolve_severity
from frcnn_pipeline.runtime.world import WorldConfig


def test_every_section_present_is_validated_and_templating_blocks_are_skipped():
    validated = validate_parameters({"runtime": {"nproc_per_node": 2}, "train": None, "_recipes": {"x": 1}})
    assert set(validated) == {"runtime", "train"}
    assert validated["runtime"].nproc_per_node == 2 and validated["train"] == TrainParams()


def test_problems_of_every_section_and_unknown_sections_are_listed_together():
    with pytest.raises(ParameterError) as raised:
        validate_parameters(
            {"trian": {}, "runtime": {"device": "gpu"}, "model": {"backbone": {"depth": 152}}, "foo": 1}
        )
    assert raised.value.problems == [
        "trian: unknown parameter section; did you mean train?",
        "runtime.device: 'gpu' is not one of 'cpu', 'cuda', 'npu' or 'auto'",
        "model.backbone.depth: 152 is not one of 18, 34, 50 or 101",
        "foo: unknown parameter section; sections: " + ", ".join(SECTIONS),
    ]


def test_the_defaults_are_the_model_zoo_cards_recipe():
    model, train, weights = ModelParams(), TrainParams(), WeightsParams()
    assert (model.backbone.depth, model.backbone.norm, model.backbone.freeze_at) == (50, "frozen_bn", 2)
    assert model.input.min_size_train == [640, 672, 704, 736, 768, 800] and model.input.max_size == 1333
    assert model.roi_heads.label_smoothing == 0.0  # the card lists 0.1; its reference code does not apply it
    solver = train.solver
    assert (solver.optimizer, solver.momentum, solver.base_lr, solver.reference_batch_size) == (
        "sgd",
        0.9,
        0.02,
        16,
    )
    assert (solver.weight_decay, solver.epochs, solver.step_epochs) == (1e-4, 12, [8, 11])
    assert (solver.warmup_iters, solver.warmup_factor, train.images_per_device) == (1000, 0.001, 2)
    assert weights.source == "detectron2://ImageNetPretrained/MSRA/R-50.pkl"


def test_the_announced_keys_of_other_features_exist():
    keys = all_schema_keys()
    assert keys["runtime.detection_ops"].default == "auto"
    assert (
        keys["model.static_shapes.enabled"].default,
        keys["model.static_shapes.max_gt_boxes"].default,
    ) == (
        False,
        100,
    )
    with pytest.raises(ParameterError, match="'fast' is not one of 'auto' or 'portable'"):
        RuntimeParams.parse({"detection_ops": "fast"}, "runtime")


def test_the_layers_take_their_defaults_from_the_schema():
    assert WorldConfig() == WorldConfig.from_runtime(RuntimeParams())
    assert WorldConfig.from_runtime(RuntimeParams(nproc_per_node=2)).world_size == 2
    assert {k: v for k, v in DEFAULT_SEVERITY.items() if v != "fatal"} == SeverityParams().model_dump()
    assert resolve_severity({"unknown_image": "fatal"})["unknown_image"] == "fatal"


def test_flatten_names_parameters_by_their_path():
    params = {"train": {"solver": {"base_lr": 1e-3, "steps": [1, 2]}, "checkpoint": {}}, "seed": 3}
    assert flatten(params) == {"train.solver.base_lr": 1e-3, "train.solver.steps": [1, 2], "seed": 3}
    assert flatten({"AP": 0.5}, "coco") == {"coco.AP": 0.5}
