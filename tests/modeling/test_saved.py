"""A saved detector: weights with their config and classes; parameters that contradict them are errors."""

import copy
import json
import logging

import pandas as pd
import pytest
import safetensors.torch
import torch
from model_configs import model_params

from frcnn_pipeline.modeling.saved import (
    INITIAL_WEIGHTS,
    TRAINED_MODEL,
    SavedDetector,
    category_mapping,
    check_same_categories,
    inference_model_config,
    read_safetensors_metadata,
    require_categories,
)

CATEGORIES = pd.DataFrame(
    {"label": [1, 0], "category_id": [8, 3], "name": ["dog", "cat"], "supercategory": ["animal", "animal"]}
)
TRAINED_WITH = {"backbone": {"depth": 18}, "input": {"format": "BGR", "pixel_mean": [1.0, 2.0, 3.0]}}


def trained(**changes) -> SavedDetector:
    fields = {
        "state_dict": {"w": torch.arange(6, dtype=torch.float32).reshape(2, 3)},
        "kind": TRAINED_MODEL,
        "model_config": model_params(TRAINED_WITH),
        "categories": category_mapping(CATEGORIES),
        "provenance": {"run_name": "demo", "iterations": 4},
        "origin": {"version": "2025-01-01T00.00.00.000Z"},
    }
    return SavedDetector(**{**fields, **changes})


def test_round_trip_keeps_weights_config_classes_and_provenance():
    saved = trained()
    loaded = SavedDetector.from_bytes(saved.to_bytes(), origin={"sha256": "abc"})
    assert torch.equal(loaded.state_dict["w"], saved.state_dict["w"])
    assert (loaded.kind, loaded.model_config, loaded.categories, loaded.provenance) == (
        saved.kind, saved.model_config, saved.categories, saved.provenance
    )  # fmt: skip
    assert loaded.origin == {"sha256": "abc"}
    assert loaded.categories == [
        {"label": 0, "category_id": 3, "name": "cat"},
        {"label": 1, "category_id": 8, "name": "dog"},
    ]


def test_a_bare_safetensors_state_dict_loads_as_unknown_without_config():
    loaded = SavedDetector.from_bytes(safetensors.torch.save({"w": torch.zeros(2)}))
    assert loaded.kind == "unknown" and loaded.model_config is None and loaded.categories is None


def test_an_older_versions_partial_config_loads_with_the_defaults_of_the_keys_it_lacks():
    saved = trained().to_bytes()
    partial = safetensors.torch.save(
        safetensors.torch.load(saved),
        metadata={**read_safetensors_metadata(saved), "model_config": json.dumps(TRAINED_WITH)},
    )
    assert SavedDetector.from_bytes(partial).model_config == model_params(TRAINED_WITH)


def test_truncated_bytes_are_refused():
    with pytest.raises(ValueError, match="truncated"):
        SavedDetector.from_bytes(trained().to_bytes()[:20])


def test_the_saved_config_builds_the_model_and_inference_options_may_differ(caplog):
    parameters = copy.deepcopy(TRAINED_WITH)
    parameters["roi_heads"] = {"score_thresh_test": 0.3, "detections_per_image": 10}  # test-time options
    with caplog.at_level(logging.INFO):
        config, source = inference_model_config(trained(), model_params(parameters))
    assert source == "saved" and config == model_params(TRAINED_WITH)
    assert "built from the model config saved with it" in caplog.text


def test_a_parameter_that_contradicts_the_saved_config_is_an_error_naming_the_key():
    parameters = {**TRAINED_WITH, "input": {**TRAINED_WITH["input"], "format": "RGB"}}
    with pytest.raises(
        ValueError,
        match=r"model\.input\.format is 'RGB' in parameters but trained_model \(version 2025-01-01T00\.00\.00"
        r"\.000Z\) was trained with 'BGR'.*remove the override .*or retrain",
    ):
        inference_model_config(trained(), model_params(parameters))
    # Every contradicting key is named, nested ones included.
    parameters["backbone"] = {"depth": 50, "stride_in_1x1": False}
    with pytest.raises(ValueError) as error:
        inference_model_config(trained(), model_params(parameters))
    for key in ("model.input.format", "model.backbone.depth", "model.backbone.stride_in_1x1"):
        assert key in str(error.value)


def test_weights_without_a_config_are_built_from_parameters(caplog):
    initial = trained(kind=INITIAL_WEIGHTS, model_config=None)
    with caplog.at_level(logging.INFO):
        config, source = inference_model_config(initial, model_params({"backbone": {"depth": 34}}))
    assert source == "parameters" and config.backbone.depth == 34
    assert "initial weights carry no training config" in caplog.text
    caplog.clear()
    with caplog.at_level(logging.WARNING):
        inference_model_config(trained(kind="unknown", model_config=None), model_params())
    assert "carries no model config" in caplog.text


def test_categories_must_match_the_models_classes():
    check_same_categories(trained(), CATEGORIES)
    check_same_categories(trained(categories=None), CATEGORIES)  # an older file: the table names them
    renamed = CATEGORIES.assign(name=["dog", "kitten"])
    with pytest.raises(ValueError, match=r"other classes .*label 0: model 3/'cat', data 3/'kitten'.*retrain"):
        check_same_categories(trained(), renamed)
    more = pd.concat([CATEGORIES, CATEGORIES.iloc[:1].assign(label=2, category_id=9)])
    with pytest.raises(ValueError, match=r"2 classes in the model, 3 in the data"):
        check_same_categories(trained(), more)
    assert require_categories(trained())[1]["name"] == "dog"
    with pytest.raises(ValueError, match="carries no class mapping"):
        require_categories(trained(categories=None))


def test_category_mapping_needs_contiguous_labels():
    with pytest.raises(ValueError, match="without gaps"):
        category_mapping(CATEGORIES.assign(label=[0, 2]))
