"""Parameters of the tests that run the project's pipelines through Kedro on a tiny demo: written dotted, as
on the command line, and handed to a `KedroSession` nested; or typed, for the tests that run nodes without a
session."""

from __future__ import annotations

from typing import Any

from frcnn_pipeline.config import SECTIONS
from frcnn_pipeline.pipelines.run_inputs import RUN_WORLD
from frcnn_pipeline.runtime.world import WorldConfig

# Small images keep a training step well under a second on two shared cores; each test adds its own keys.
TINY_DEMO = {
    "ingest.demo.image_size": 64,
    "ingest.demo.num_train_images": 8,
    "ingest.demo.num_val_images": 4,
    "model.input.min_size_train": [64],
    "model.input.min_size_test": 64,
    "model.input.max_size": 96,
    "train.images_per_device": 2,
    "train.solver.warmup_iters": 1,
    "train.solver.steps": [],
}


def nested(dotted: dict[str, Any]) -> dict[str, Any]:
    """`{"a.b": 1}` -> `{"a": {"b": 1}}`: Kedro's runtime parameters."""
    tree: dict[str, Any] = {}
    for key, value in dotted.items():
        *parents, leaf = key.split(".")
        node = tree
        for parent in parents:
            node = node.setdefault(parent, {})
        node[leaf] = value
    return tree


def cli_params(dotted: dict[str, Any]) -> str:
    """The same for `kedro run --params`."""
    return ",".join(f"{key}={str(value).replace(' ', '')}" for key, value in dotted.items())


def typed(inputs: dict[str, Any]) -> dict[str, Any]:
    """A node's inputs with each `params:<section>` validated into its section and, with `params:runtime`,
    the run's world (`run_world`, here without a launcher), as the run configuration's hook hands them to
    the nodes in a session (the tests that run pipelines without one)."""
    typed_inputs = {
        name: SECTIONS[name.removeprefix("params:")].parse(value, name.removeprefix("params:"))
        if name.startswith("params:")
        else value
        for name, value in inputs.items()
    }
    if "params:runtime" in typed_inputs:
        typed_inputs[RUN_WORLD] = WorldConfig.from_runtime(typed_inputs["params:runtime"], environ={})
    return typed_inputs
