"""DetectorDataset: versioned safetensors with the config in the header; loads say what they read."""

import hashlib

import pytest
import safetensors.torch
import torch
from kedro.io import DatasetError, Version
from model_configs import model_params

from frcnn_pipeline.datasets import DetectorDataset
from frcnn_pipeline.modeling.saved import TRAINED_MODEL, SavedDetector


def detector(value: float) -> SavedDetector:
    return SavedDetector(
        {"w": torch.full((3,), value)},
        TRAINED_MODEL,
        model_config=model_params({"input": {"format": "BGR"}}),
        categories=[{"label": 0, "category_id": 1, "name": "a"}],
        provenance={"run_name": "demo"},
    )


def test_versions_are_kept_and_loads_name_version_and_sha256(tmp_path):
    path = tmp_path / "trained_model.safetensors"
    DetectorDataset(filepath=str(path), version=Version(None, "2025-01-01T00.00.00.000Z")).save(detector(1.0))
    DetectorDataset(filepath=str(path), version=Version(None, "2025-01-02T00.00.00.000Z")).save(detector(2.0))

    latest = DetectorDataset(filepath=str(path), version=Version(None, None)).load()
    assert latest.state_dict["w"].tolist() == [2.0, 2.0, 2.0]
    assert latest.model_config == model_params({"input": {"format": "BGR"}}) and latest.provenance == {
        "run_name": "demo"
    }
    assert latest.origin["version"] == "2025-01-02T00.00.00.000Z"
    file = path / "2025-01-02T00.00.00.000Z" / "trained_model.safetensors"
    assert latest.origin["sha256"] == hashlib.sha256(file.read_bytes()).hexdigest()

    earlier = DetectorDataset(filepath=str(path), version=Version("2025-01-01T00.00.00.000Z", None)).load()
    assert earlier.state_dict["w"].tolist() == [1.0, 1.0, 1.0]
    assert not list(path.rglob("*.partial")), "no temporary file is left behind"


def test_a_plain_safetensors_file_loads_without_config(tmp_path):
    path = tmp_path / "initial_weights.safetensors"
    safetensors.torch.save_file({"w": torch.ones(2)}, str(path))
    loaded = DetectorDataset(filepath=str(path)).load()
    assert loaded.kind == "unknown" and loaded.model_config is None
    assert loaded.origin["version"] is None and loaded.state_dict["w"].tolist() == [1.0, 1.0]


def test_a_truncated_file_is_a_clear_error(tmp_path):
    path = tmp_path / "model.safetensors"
    path.write_bytes(detector(1.0).to_bytes()[:30])
    with pytest.raises(DatasetError, match=r"model\.safetensors is not a readable safetensors model.*re-run"):
        DetectorDataset(filepath=str(path)).load()


def test_only_a_saved_detector_is_saved(tmp_path):
    with pytest.raises(DatasetError, match="expects a SavedDetector"):
        DetectorDataset(filepath=str(tmp_path / "m.safetensors")).save({"w": torch.ones(1)})
