"""The predict pipeline on a folder with good and broken images, with the project's catalog entries."""

import json
from pathlib import Path

import model_configs
import numpy as np
import pandas as pd
import pytest
import torch
from kedro.config import OmegaConfigLoader
from kedro.io import DataCatalog, MemoryDataset
from kedro.runner import SequentialRunner
from kedro_params import typed
from PIL import Image

from frcnn_pipeline.config import ModelParams, PredictParams
from frcnn_pipeline.modeling import build_model
from frcnn_pipeline.modeling.saved import TRAINED_MODEL, SavedDetector, category_mapping
from frcnn_pipeline.pipelines.predict import create_pipeline
from frcnn_pipeline.pipelines.predict.nodes import list_prediction_images
from frcnn_pipeline.settings import CONFIG_LOADER_ARGS

PROJECT = Path(__file__).resolve().parents[3]
CATEGORIES = pd.DataFrame(
    {"label": [0, 1], "category_id": [3, 8], "name": ["cat", "dog"], "supercategory": ["animal", "animal"]}
)


@pytest.fixture(scope="module")
def config() -> dict:
    loader = OmegaConfigLoader(conf_source=str(PROJECT / "conf"), env="base", **CONFIG_LOADER_ARGS)
    return {"parameters": loader["parameters"], "catalog": loader["catalog"]}


@pytest.fixture(scope="module")
def model_params(config) -> ModelParams:
    model = config["parameters"]["model"]
    return model_configs.model_params(
        {**model, "input": {**model["input"], "min_size_test": 64, "max_size": 96}}
    )


@pytest.fixture(scope="module")
def model(model_params) -> SavedDetector:
    torch.manual_seed(0)
    return SavedDetector(
        build_model(model_params, len(CATEGORIES)).state_dict(),
        TRAINED_MODEL,
        model_config=model_params,
        categories=category_mapping(CATEGORIES),
        provenance={"run_name": "test"},
    )


@pytest.fixture
def image_folder(tmp_path) -> Path:
    folder = tmp_path / "images"
    (folder / "nested").mkdir(parents=True)
    rng = np.random.default_rng(0)
    for name in ("a.jpg", "nested/b.png", "nested/a.png"):
        Image.fromarray(rng.integers(0, 255, (48, 64, 3), dtype=np.uint8)).save(folder / name)
    (folder / "broken.jpg").write_bytes(b"\xff\xd8 truncated")
    (folder / "notes.txt").write_text("not an image")
    return folder


def catalog_in(
    tmp_path: Path, catalog_config: dict, inputs: dict, save_version: str | None = None
) -> DataCatalog:
    """conf/base/catalog_predict.yml with every file under tmp_path, plus in-memory inputs."""
    config = {}
    for name, entry in catalog_config.items():
        if name.startswith("_") or name not in create_pipeline().datasets():
            continue
        config[name] = (
            {**entry, "filepath": str(tmp_path / entry["filepath"])} if "filepath" in entry else entry
        )
    catalog = DataCatalog.from_config(config, save_version=save_version)
    for name, data in typed(inputs).items():
        catalog[name] = MemoryDataset(data, copy_mode="assign")
    return catalog


def outputs(tmp_path: Path) -> tuple[list[Path], list[Path]]:
    """Each run's results JSON and drawn-images folder, oldest first."""
    folder = tmp_path / "data/07_model_output/predict"
    return (
        sorted(folder.glob("prediction_results.json/*/prediction_results.json")),
        sorted(folder.glob("prediction_images/*/prediction_images")),
    )


@pytest.fixture
def inputs(model, model_params, config) -> dict:
    return {
        "trained_model": model,
        "params:model": model_params,
        "params:runtime": config["parameters"]["runtime"],
    }


def test_predict_writes_results_and_drawn_images_and_reports_broken_ones(
    tmp_path, image_folder, inputs, config, caplog
):
    # Score 0: the untrained model's boxes all count, so drawing and naming are exercised.
    predict = {**config["parameters"]["predict"], "images": str(image_folder), "score_threshold": 0.0}
    inputs = {**inputs, "params:predict": predict}
    catalog = catalog_in(tmp_path, config["catalog"], inputs, save_version="2025-03-01T00.00.00.000Z")
    with caplog.at_level("WARNING"):
        SequentialRunner().run(create_pipeline(), catalog)

    [results_file], [drawn_folder] = outputs(tmp_path)
    assert results_file.parent.name == drawn_folder.parent.name == "2025-03-01T00.00.00.000Z"
    results = json.loads(results_file.read_text())
    assert results["model"]["kind"] == "trained_model" and results["model"]["model_config_from"] == "saved"
    assert results["model"]["categories"] == category_mapping(CATEGORIES)
    assert [Path(r["path"]).relative_to(image_folder).as_posix() for r in results["images"]] == [
        "a.jpg",
        "nested/a.png",
        "nested/b.png",
    ]
    assert [Path(u["path"]).name for u in results["unreadable"]] == ["broken.jpg"]
    assert results["unreadable"][0]["error"]
    assert "broken.jpg" in caplog.text
    detections = [d for r in results["images"] for d in r["detections"]]
    assert detections
    assert {(d["category_id"], d["category_name"]) for d in detections} <= {(3, "cat"), (8, "dog")}
    for image in results["images"]:
        for d in image["detections"]:
            x1, y1, x2, y2 = d["bbox_xyxy"]
            assert 0 <= x1 <= x2 <= image["width"] and 0 <= y1 <= y2 <= image["height"]
            assert d["bbox"] == pytest.approx([x1, y1, x2 - x1, y2 - y1])

    drawn = sorted(p.name for p in drawn_folder.iterdir())
    assert drawn == ["a_0.png", "a_2.png", "b.png"]  # stems made unique; the broken image is skipped
    with Image.open(drawn_folder / "b.png") as image:
        assert image.size == (64, 48)
        original = np.asarray(Image.open(image_folder / "nested" / "b.png"))
        assert not np.array_equal(np.asarray(image.convert("RGB")), original)  # boxes were drawn


def test_listed_paths_that_do_not_exist_are_reported_not_fatal(tmp_path, image_folder, inputs, config):
    listed = [str(image_folder / "a.jpg"), str(tmp_path / "gone.jpg")]
    inputs = {**inputs, "params:predict": {**config["parameters"]["predict"], "images": listed}}
    SequentialRunner().run(create_pipeline(), catalog_in(tmp_path, config["catalog"], inputs))
    [results_file], _ = outputs(tmp_path)
    results = json.loads(results_file.read_text())
    assert [Path(r["path"]).name for r in results["images"]] == ["a.jpg"]
    assert [Path(u["path"]).name for u in results["unreadable"]] == ["gone.jpg"]


def test_a_rerun_keeps_the_first_runs_results_and_images(tmp_path, image_folder, inputs, config):
    inputs = {**inputs, "params:predict": {**config["parameters"]["predict"], "images": str(image_folder)}}
    for version in ("2025-03-01T00.00.00.000Z", "2025-03-02T00.00.00.000Z"):
        SequentialRunner().run(create_pipeline(), catalog_in(tmp_path, config["catalog"], inputs, version))
    results, drawn = outputs(tmp_path)
    assert [path.parent.name for path in results] == ["2025-03-01T00.00.00.000Z", "2025-03-02T00.00.00.000Z"]
    assert [path.parent.name for path in drawn] == [path.parent.name for path in results]
    assert all(len(list(folder.iterdir())) == 3 for folder in drawn)


def test_a_model_without_class_names_is_refused(tmp_path, image_folder, inputs, config, model):
    bare = SavedDetector(model.state_dict, "unknown")
    inputs = {**inputs, "trained_model": bare, "params:predict": {**config["parameters"]["predict"],
              "images": str(image_folder)}}  # fmt: skip
    with pytest.raises(ValueError, match="carries no class mapping"):
        SequentialRunner().run(create_pipeline(), catalog_in(tmp_path, config["catalog"], inputs))
    assert outputs(tmp_path) == ([], [])


def test_bad_image_sources_are_clear_errors(tmp_path):
    with pytest.raises(ValueError, match=r"predict\.images is not set"):
        list_prediction_images(PredictParams(images=None))
    with pytest.raises(FileNotFoundError, match="is not a folder"):
        list_prediction_images(PredictParams(images=str(tmp_path / "missing")))
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="No image files"):
        list_prediction_images(PredictParams(images=str(tmp_path / "empty")))


def test_pipeline_is_tagged_and_named_for_viz():
    pipeline = create_pipeline()
    assert all("predict" in node.tags for node in pipeline.nodes)
    assert "predict.predict_images" in {node.name for node in pipeline.nodes}
    assert pipeline.outputs() >= {"prediction_results", "prediction_images"}
    assert pipeline.inputs() == {
        "trained_model", "params:model", "params:predict", "params:runtime", "run_world"
    }  # fmt: skip
