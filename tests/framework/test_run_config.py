"""The run configuration: every section validated once (defaults where none is given), the world and the
pipeline shape decided with it, and `params:` names resolved to typed sections."""

from dataclasses import FrozenInstanceError, fields

import pytest

from frcnn_pipeline.config import SECTIONS, EvaluateParams, ParameterError, RuntimeParams
from frcnn_pipeline.framework.run_config import RunConfig
from frcnn_pipeline.pipelines.shape import DEFAULT_SHAPE, PipelineShape
from frcnn_pipeline.runtime.world import LauncherConfigError, WorldConfig


def test_it_holds_every_section_of_the_schema_with_its_defaults():
    config = RunConfig.from_parameters({"_recipes": {"ignored": {}}}, environ={})
    assert {field.name for field in fields(RunConfig)} == {*SECTIONS, "world", "shape"}
    assert all(getattr(config, name) == section() for name, section in SECTIONS.items())
    assert config.world == WorldConfig() and config.shape == DEFAULT_SHAPE


def test_it_is_frozen():
    config = RunConfig.from_parameters({}, environ={})
    with pytest.raises(FrozenInstanceError):
        config.runtime = RuntimeParams()  # type: ignore[misc]


def test_the_decisions_follow_the_parameters():
    splits = {"test": {"annotation_file": "t.json", "image_dir": "t"}}
    config = RunConfig.from_parameters(
        {"ingest": {"splits": splits}, "runtime": {"nproc_per_node": 2, "inference_backend": "onnxruntime"}},
        environ={},
    )
    assert config.shape == PipelineShape(("val", "test"), "onnxruntime")
    assert config.world.world_size == 2


def test_the_world_reads_the_launchers_environment():
    environ = {"SLURM_NODEID": "1", "SLURM_NNODES": "2", "SLURM_JOB_NODELIST": "node[1-2]"}
    world = RunConfig.from_parameters({}, environ=environ).world
    assert (world.launcher, world.node_rank, world.is_main_process) == ("slurm", 1, False)
    with pytest.raises(LauncherConfigError, match=r"node_rank must be in \[0, 2\)"):
        RunConfig.from_parameters({"runtime": {"num_nodes": 2, "node_rank": 2, "master_port": 1}}, environ={})


def test_every_problem_of_every_section_is_one_line():
    with pytest.raises(ParameterError) as caught:
        RunConfig.from_parameters({"runtime": {"nproc_per_nod": 8}, "trian": {}}, environ={})
    assert caught.value.problems == [
        "runtime.nproc_per_nod: unknown parameter; did you mean runtime.nproc_per_node?",
        "trian: unknown parameter section; did you mean train?",
    ]


def test_a_bad_split_name_is_refused():
    with pytest.raises(ValueError, match="must start with a letter"):
        RunConfig.from_parameters({"ingest": {"splits": {"1st": {}}}}, environ={})


def test_params_names_resolve_to_typed_sections_and_keys():
    config = RunConfig.from_parameters({"evaluate": {"inference": {"batch_size": 4}}}, environ={})
    assert isinstance(config.parameter("params:evaluate"), EvaluateParams)
    assert config.parameter("params:evaluate.inference.batch_size") == 4
    with pytest.raises(KeyError, match="params:evaluat: no such parameter"):
        config.parameter("params:evaluat")
