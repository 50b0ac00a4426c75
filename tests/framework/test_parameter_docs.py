"""Each environment's parameters as Kedro resolves them: valid, the card's recipe written once, envs stating
only what they change, every conf key known to the schema, and the generated docs current."""

import shutil
from pathlib import Path

import pytest
import yaml

from frcnn_pipeline.config import ModelParams, all_schema_keys
from frcnn_pipeline.framework.parameter_docs import (
    CONF,
    environments,
    flatten,
    generated_files,
    load_parameters,
    resolved_sections,
)

ACCELERATOR_ENVS = {"npu1p": ("npu", 1), "npu8p": ("npu", 8), "gpu1p": ("cuda", 1), "gpu8p": ("cuda", 8)}
# What Ascend needs of the model, not the recipe: one padded size, fixed counts and a fixed RoIAlign sample
# grid (each new shape compiles).
NPU_STATIC_SHAPES = {
    "model.input.fixed_size": [1344, 1344],
    "model.roi_heads.pooler_sampling_ratio": 2,
    "model.static_shapes.enabled": True,
}
DEMO_ENVS = ("base", "cpu2p")
# The model-zoo card's recipe, as its README states it (the test's own copy: the spec, not the code).
CARD_SOLVER = {
    "optimizer": "sgd", "momentum": 0.9, "base_lr": 0.02, "reference_batch_size": 16, "weight_decay": 1e-4,
    "weight_decay_norm": 0.0, "epochs": 12, "step_epochs": [8, 11], "gamma": 0.1, "warmup_iters": 1000,
    "warmup_factor": 0.001,
}  # fmt: skip


def parameter_files(env: str) -> list[Path]:
    return sorted((CONF / env).glob("parameters*.yml"))


def stated_leaves(env: str) -> dict[str, object]:
    """Every leaf key an env's own parameter files state, with its value."""
    leaves = {}
    for path in parameter_files(env):
        for section, value in (yaml.safe_load(path.read_text()) or {}).items():
            leaves.update(flatten(value, section) if isinstance(value, dict) else {section: value})
    return leaves


def _is_reference(value) -> bool:
    return isinstance(value, str) and value.startswith("${")


def test_the_project_has_the_documented_environments():
    assert environments() == ["base", "cpu2p", "gpu1p", "gpu8p", "npu1p", "npu8p"]


@pytest.mark.parametrize("env", ["base", "cpu2p", *ACCELERATOR_ENVS])
def test_every_environment_is_valid(env):
    sections = resolved_sections(env)
    assert set(sections) == {
        "ingest", "model", "weights", "runtime", "train", "evaluate", "predict", "export"
    }  # fmt: skip


@pytest.mark.parametrize("env", ACCELERATOR_ENVS)
def test_accelerator_envs_run_the_cards_recipe(env):
    sections = resolved_sections(env)
    card = ModelParams().model_dump()  # detectron2's R-50-FPN, every key
    if env.startswith("npu"):
        card["input"]["fixed_size"], card["static_shapes"]["enabled"] = [1344, 1344], True
        card["roi_heads"]["pooler_sampling_ratio"] = 2
    assert sections["model"] == card
    assert (
        sections["model"]["backbone"]["depth"] == 50
        and sections["model"]["roi_heads"]["label_smoothing"] == 0
    )
    solver = sections["train"]["solver"]
    assert {key: solver[key] for key in CARD_SOLVER} == CARD_SOLVER
    assert sections["train"]["images_per_device"] == 2
    assert sections["weights"]["source"] == "detectron2://ImageNetPretrained/MSRA/R-50.pkl"
    runtime = sections["runtime"]
    assert (runtime["device"], runtime["nproc_per_node"]) == ACCELERATOR_ENVS[env]
    assert runtime["amp"]["enabled"] and runtime["amp"]["dtype"] == "float16"
    assert sections["ingest"]["data_root"] == "/path/to/dataset/coco" and sections["train"]["run_name"] == env


@pytest.mark.parametrize("env", DEMO_ENVS)
def test_demo_envs_run_the_demo_recipe(env):
    sections = resolved_sections(env)
    assert sections["model"]["backbone"]["depth"] == 18 and sections["model"]["input"]["max_size"] <= 256
    assert (
        sections["train"]["solver"]["optimizer"] == "adamw" and sections["train"]["solver"]["max_iter"] == 600
    )
    assert sections["weights"]["source"] == "none" and sections["ingest"]["data_root"] is None
    assert sections["runtime"]["device"] == "cpu" and not sections["runtime"]["amp"]["enabled"]


def test_the_cards_recipe_is_written_nowhere_in_the_envs():
    recipe_keys = ("model.", "weights.", "train.solver.", "train.checkpoint.")
    for env in (*ACCELERATOR_ENVS, "cpu2p"):
        stated = {key: value for key, value in stated_leaves(env).items() if key.startswith(recipe_keys)}
        assert stated == (NPU_STATIC_SHAPES if env.startswith("npu") else {}), env


@pytest.mark.parametrize("env", ["cpu2p", *ACCELERATOR_ENVS])
def test_each_env_states_only_what_it_changes(env, tmp_path):
    """Every key an env's files state has a value the env would not have without its parameter files."""
    shutil.copytree(CONF / "base", tmp_path / "base")
    (tmp_path / "bare").mkdir()
    if (CONF / env / "globals.yml").exists():
        shutil.copy(CONF / env / "globals.yml", tmp_path / "bare")
    inherited = {}
    for section, values in resolved_sections("bare", conf_source=tmp_path).items():
        inherited.update(flatten(values, section))
    stated = stated_leaves(env)
    assert stated, f"{env} states nothing: it is the same as base"
    base_globals = yaml.safe_load((CONF / "base" / "globals.yml").read_text())
    env_globals = (
        yaml.safe_load((tmp_path / "bare" / "globals.yml").read_text())
        if (tmp_path / "bare" / "globals.yml").exists()
        else {}
    )
    assert not {key for key, value in env_globals.items() if base_globals.get(key) == value}
    redundant = {key: value for key, value in stated.items() if inherited.get(key) == value}
    assert not redundant, f"conf/{env} restates what it inherits: {redundant}"


def test_every_key_in_the_conf_files_is_known_to_the_schema():
    known = set(all_schema_keys())
    for path in sorted(CONF.glob("*/parameters*.yml")):
        content = yaml.safe_load(path.read_text()) or {}
        blocks = [content, *(content.pop("_recipes", None) or {}).values()]
        for block in blocks:
            for section, value in block.items():
                leaves = flatten(value, section) if isinstance(value, dict) else {section: value}
                # `model: ${_recipes...}` takes a block, it is not a parameter
                unknown = sorted(
                    key for key, v in leaves.items() if key not in known and not _is_reference(v)
                )
                assert not unknown, f"{path.relative_to(CONF.parent)}: not in the schema: {unknown}"


def test_params_override_single_nested_keys_of_a_recipe():
    overrides = {"train": {"solver": {"base_lr": 0.01}}, "model": {"backbone": {"depth": 101}}}
    card = load_parameters("gpu8p", runtime_params=overrides)
    assert card["train"] == {"run_name": "gpu8p", "eval_period": 10000, "solver": {"base_lr": 0.01}}
    assert card["model"] == {"backbone": {"depth": 101}}
    demo = load_parameters("base", runtime_params=overrides)
    assert demo["train"]["solver"]["base_lr"] == 0.01 and demo["train"]["solver"]["optimizer"] == "adamw"
    assert demo["model"]["backbone"] == {"depth": 101, "norm": "bn", "freeze_at": 0, "fpn_channels": 64}


def test_generated_docs_are_current():
    stale = [
        str(path)
        for path, content in generated_files().items()
        if path.read_text(encoding="utf-8") != content
    ]
    assert not stale, f"out of date: {stale}; run `python -m frcnn_pipeline.framework.parameter_docs`"
