"""Shared test set-up: no telemetry, no network, small CPU work."""

import os
import shutil
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from tiny_training import write_tiny_dataset

from frcnn_pipeline.layers import backend as detection_ops

os.environ.setdefault("KEDRO_DISABLE_TELEMETRY", "1")
# Before anything imports mlflow (its telemetry client starts on import); frcnn_pipeline.framework does so
# for runs.
os.environ["MLFLOW_DISABLE_TELEMETRY"] = "true"
os.environ.setdefault("OMP_NUM_THREADS", "2")

PROJECT = Path(__file__).resolve().parents[1]
DUPLICATE_IMAGE_IDS = (
    '{"images": [{"id": 1, "file_name": "a.jpg", "width": 8, "height": 8},'
    ' {"id": 1, "file_name": "b.jpg", "width": 8, "height": 8}],'
    ' "annotations": [], "categories": [{"id": 1, "name": "x"}]}'
)


@pytest.fixture
def project(tmp_path):
    """A project copy (conf only; the package is the installed one) and a COCO root with duplicate ids."""
    root = tmp_path / "project"
    shutil.copytree(PROJECT / "conf", root / "conf", ignore=shutil.ignore_patterns("local"))
    (root / "conf" / "local").mkdir()
    (root / "src").mkdir()
    shutil.copy(PROJECT / "pyproject.toml", root)
    coco = tmp_path / "coco"
    (coco / "annotations").mkdir(parents=True)
    for split in ("train", "val"):
        (coco / "annotations" / f"instances_{split}2017.json").write_text(DUPLICATE_IMAGE_IDS)
    return root, coco


@pytest.fixture(scope="module")
def module_tmp(request, tmp_path_factory) -> Iterator[Callable[[str], Path]]:
    """`module_tmp("name")` makes a new folder for a module's shared fixtures, removed once the module's tests
    are done unless one of them failed. The suite writes 13 GB of checkpoints and runs; pytest's own
    module-scoped folders would keep all of it until the session ends, which once filled CI's disk."""
    base = tmp_path_factory.mktemp(request.module.__name__.rpartition(".")[2])
    failures_before = request.session.testsfailed

    def make(name: str) -> Path:
        folder = base / name
        folder.mkdir()
        return folder

    yield make
    if request.session.testsfailed == failures_before:
        shutil.rmtree(base, ignore_errors=True)


@pytest.fixture(scope="session")
def tiny_tables(tmp_path_factory):
    """Eight tiny generated images and their tables, shared by the engine and runtime tests."""
    return write_tiny_dataset(tmp_path_factory.mktemp("tiny_images"), count=8)


@pytest.fixture(autouse=True)
def _auto_detection_ops():
    """Every test starts and ends with the default detection-ops setting (auto), as every run's process does:
    a test that picks the portable kernels must not change the arithmetic of the tests after it."""
    detection_ops.configure("auto")
    yield
    detection_ops.configure("auto")
