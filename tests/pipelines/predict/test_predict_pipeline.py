"""The predict pipeline on a folder with good and broken images, with the project's catalog entries."""

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from kedro.config import OmegaConfigLoader
from kedro.io import DataCatalog, MemoryDataset
from kedro.runner import SequentialRunner
from PIL import Image

from frcnn_pipeline.modeling import build_model
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
def model_params(config) -> dict:
    model = config["parameters"]["model"]
    return {**model, "input": {**model["input"], "min_size_test": 64, "max_size": 96}}


@pytest.fixture(scope="module")
def weights(model_params) -> dict[str, torch.Tensor]:
    torch.manual_seed(0)
    return build_model(model_params, len(CATEGORIES)).state_dict()


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


def catalog_in(tmp_path: Path, catalog_config: dict, inputs: dict) -> DataCatalog:
    config = {}
    for name, entry in catalog_config.items():
        if name.startswith("_") or name not in create_pipeline().datasets():
            continue
        moved = {
            key: str(tmp_path / "out" / Path(entry[key]).name) for key in ("filepath", "path") if key in entry
        }
        config[name] = {**entry, **moved}
    catalog = DataCatalog.from_config(config)
    for name, data in inputs.items():
        catalog[name] = MemoryDataset(data, copy_mode="assign")
    return catalog


@pytest.fixture
def inputs(weights, model_params, config) -> dict:
    return {
        "trained_model": weights,
        "categories": CATEGORIES,
        "params:model": model_params,
        "params:runtime": config["parameters"]["runtime"],
    }


def test_predict_writes_results_and_drawn_images_and_reports_broken_ones(
    tmp_path, image_folder, inputs, config, caplog
):
    # Score 0: the untrained model's boxes all count, so drawing and naming are exercised.
    predict = {**config["parameters"]["predict"], "images": str(image_folder), "score_threshold": 0.0}
    inputs = {**inputs, "params:predict": predict}
    with caplog.at_level("WARNING"):
        SequentialRunner().run(create_pipeline(), catalog_in(tmp_path, config["catalog"], inputs))

    results = json.loads((tmp_path / "out" / "prediction_results.json").read_text())
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

    drawn = sorted(p.name for p in (tmp_path / "out" / "predictions").iterdir())
    assert drawn == ["a_0.png", "a_2.png", "b.png"]  # stems made unique; the broken image is skipped
    with Image.open(tmp_path / "out" / "predictions" / "b.png") as image:
        assert image.size == (64, 48)
        original = np.asarray(Image.open(image_folder / "nested" / "b.png"))
        assert not np.array_equal(np.asarray(image.convert("RGB")), original)  # boxes were drawn


def test_listed_paths_that_do_not_exist_are_reported_not_fatal(tmp_path, image_folder, inputs, config):
    listed = [str(image_folder / "a.jpg"), str(tmp_path / "gone.jpg")]
    inputs = {**inputs, "params:predict": {**config["parameters"]["predict"], "images": listed}}
    SequentialRunner().run(create_pipeline(), catalog_in(tmp_path, config["catalog"], inputs))
    results = json.loads((tmp_path / "out" / "prediction_results.json").read_text())
    assert [Path(r["path"]).name for r in results["images"]] == ["a.jpg"]
    assert [Path(u["path"]).name for u in results["unreadable"]] == ["gone.jpg"]


def test_bad_image_sources_are_clear_errors(tmp_path):
    with pytest.raises(ValueError, match=r"predict\.images is not set"):
        list_prediction_images({"images": None})
    with pytest.raises(FileNotFoundError, match="is not a folder"):
        list_prediction_images({"images": str(tmp_path / "missing")})
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="No image files"):
        list_prediction_images({"images": str(tmp_path / "empty")})


def test_pipeline_is_tagged_and_named_for_viz():
    pipeline = create_pipeline()
    assert all("predict" in node.tags for node in pipeline.nodes)
    assert "predict.predict_images" in {node.name for node in pipeline.nodes}
    assert pipeline.outputs() >= {"prediction_results", "prediction_images"}
