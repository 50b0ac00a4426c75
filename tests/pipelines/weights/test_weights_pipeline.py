"""The weights pipeline through Kedro: catalog entries from conf/base, `categories` fed in memory."""

import functools
import http.server
import logging
import pickle
import threading
from pathlib import Path

import pandas as pd
import pytest
import torch
import torchvision
import yaml
from kedro.framework.hooks import _create_hook_manager
from kedro.io import DataCatalog, MemoryDataset
from kedro.runner import SequentialRunner
from model_configs import model_params

from frcnn_pipeline.config import ModelParams, WeightsParams
from frcnn_pipeline.framework.hooks import ReportOnFailureHook
from frcnn_pipeline.framework.parameter_docs import load_parameters
from frcnn_pipeline.modeling import build_model
from frcnn_pipeline.pipelines.weights import create_pipeline
from frcnn_pipeline.pipelines.weights.nodes import convert_pretrained_weights, fetch_pretrained_weights
from frcnn_pipeline.weights import WeightsFetchError
from frcnn_pipeline.weights.checkpoint import WeightsConversionError
from frcnn_pipeline.weights.convert import FROZEN_BN_BATCH_COUNT

CONF = Path(__file__).parents[3] / "conf" / "base"
CATEGORIES = pd.DataFrame(
    {
        "label": [0, 1, 2],
        "category_id": [1, 2, 5],
        "name": ["circle", "square", "triangle"],
        "supercategory": ["shape"] * 3,
    }
)


def _parameters(name: str) -> dict:
    return load_parameters("base")[name]


def _typed_model(model: dict) -> MemoryDataset:
    """`params:model` validated, as the run configuration's hook hands it to the nodes."""
    return MemoryDataset(ModelParams.parse(model, "model"), copy_mode="assign")


def _catalog(tmp_path: Path, weights_params: dict) -> DataCatalog:
    entries = yaml.safe_load((CONF / "catalog_weights.yml").read_text())
    for entry in entries.values():
        if "filepath" in entry:
            entry["filepath"] = str(tmp_path / Path(entry["filepath"]).name)
    catalog = DataCatalog.from_config(entries)
    catalog["categories"] = MemoryDataset(CATEGORIES)
    catalog["params:model"] = _typed_model(_parameters("model"))
    weights = WeightsParams.parse(weights_params, "weights")
    catalog["params:weights"] = MemoryDataset(weights, copy_mode="assign")
    return catalog


def _torchvision_resnet18_as_detectron2(path: Path) -> dict[str, torch.Tensor]:
    """An R-18 ImageNet backbone as detectron2's tools/convert-torchvision-to-d2.py writes it."""
    torch.manual_seed(7)
    state = torchvision.models.resnet18().state_dict()
    converted = {}
    for key, value in state.items():
        name = key if "layer" in key else "stem." + key
        for stage in (1, 2, 3, 4):
            name = name.replace(f"layer{stage}", f"res{stage + 1}")
        for index in (1, 2, 3):
            name = name.replace(f"bn{index}", f"conv{index}.norm")
        name = name.replace("downsample.0", "shortcut").replace("downsample.1", "shortcut.norm")
        converted[name] = value.numpy()
    path.write_bytes(
        pickle.dumps({"model": converted, "__author__": "torchvision", "matching_heuristics": True})
    )
    return state


def _run(tmp_path: Path, source: str) -> tuple[dict[str, torch.Tensor], pd.DataFrame]:
    weights_params = {
        **_parameters("weights"),
        "source": source,
        "cache_dir": str(tmp_path / "cache"),
        "retries": 0,
    }
    catalog = _catalog(tmp_path, weights_params)
    SequentialRunner().run(create_pipeline(), catalog)
    return catalog.load("initial_weights").state_dict, catalog.load("weights_conversion_report")


@pytest.fixture
def http_root(tmp_path):
    root = tmp_path / "www"
    root.mkdir()
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(root))
    handler.log_message = lambda *args: None
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()
    yield root, f"http://127.0.0.1:{httpd.server_address[1]}"
    httpd.shutdown()
    httpd.server_close()


def _demo_model():
    return build_model(model_params(_parameters("model")), num_classes=len(CATEGORIES))


def test_source_none_is_a_seeded_random_initialisation(tmp_path):
    state, report = _run(tmp_path, "none")
    again, _ = _run(tmp_path / "again", "none")
    assert state.keys() == again.keys() and all(torch.equal(state[k], again[k]) for k in state)
    _demo_model().load_state_dict(state)  # strict: the full state dict of the demo model
    assert set(report.status) == {"random_init"} and len(report) == len(state)
    assert (tmp_path / "weights_conversion_report.csv").exists()
    assert (tmp_path / "initial_weights.safetensors").exists()


def test_initial_weights_carry_their_classes_and_source_but_no_model_config(tmp_path):
    _run(tmp_path, "none")
    saved = _catalog(tmp_path, _parameters("weights")).load("initial_weights")
    assert saved.kind == "initial_weights" and saved.model_config is None
    assert [(c["label"], c["category_id"], c["name"]) for c in saved.categories] == [
        (0, 1, "circle"), (1, 2, "square"), (2, 5, "triangle")
    ]  # fmt: skip
    assert saved.provenance["source"] == "none"
    assert len(saved.origin["sha256"]) == 64 and saved.origin["version"] is None


def test_a_local_pickle_and_the_same_file_over_http_give_the_same_weights(tmp_path, http_root, caplog):
    root, base_url = http_root
    resnet = _torchvision_resnet18_as_detectron2(root / "R-18.pkl")
    with caplog.at_level(logging.WARNING):
        local_state, local_report = _run(tmp_path / "local", str(root / "R-18.pkl"))
    assert "torchvision weights expect RGB" not in caplog.text  # the demo model is RGB
    http_state, http_report = _run(tmp_path / "http", f"{base_url}/R-18.pkl")
    assert (
        tmp_path / "http" / "cache" / base_url.removeprefix("http://").replace(":", "_") / "R-18.pkl"
    ).exists()
    for key in resnet:
        if not key.startswith("fc."):
            torch.testing.assert_close(local_state[f"backbone.body.{key}"], resnet[key])
            assert torch.equal(http_state[f"backbone.body.{key}"], local_state[f"backbone.body.{key}"])
    _demo_model().load_state_dict(local_state)
    assert local_report.equals(http_report)
    assert set(local_report.status) == {"mapped", "missing", "expected_unused"}
    assert set(local_report.source_key[local_report.status == "expected_unused"]) == {
        "stem.fc.weight",
        "stem.fc.bias",
    }
    assert not local_report.target_key[local_report.status == "missing"].str.startswith("backbone.body").any()


def test_an_unreachable_url_names_the_url_and_where_to_put_the_file(tmp_path, http_root):
    _, base_url = http_root
    params = {
        **_parameters("weights"),
        "source": f"{base_url}/R-50.pkl",
        "cache_dir": str(tmp_path),
        "retries": 0,
    }
    with pytest.raises(WeightsFetchError, match=r"R-50.pkl: HTTP 404"):
        fetch_pretrained_weights(WeightsParams.parse(params, "weights"))


def test_mismatched_conventions_are_warned_about(tmp_path, caplog):
    path = tmp_path / "R-18.pkl"
    _torchvision_resnet18_as_detectron2(path)
    model = {**_parameters("model"), "input": {**_parameters("model")["input"], "format": "BGR"}}
    with caplog.at_level(logging.WARNING):
        convert_pretrained_weights(
            {"source": str(path), "path": str(path)},
            CATEGORIES,
            ModelParams.parse(model, "model"),
            WeightsParams.parse(_parameters("weights"), "weights"),
        )
    assert "torchvision weights expect RGB input but model.input.format is BGR" in caplog.text


def test_a_failed_conversion_still_writes_its_report(tmp_path):
    """The error says to read weights_conversion_report.csv: the report is saved although the node fails."""
    _torchvision_resnet18_as_detectron2(tmp_path / "r18.pkl")
    weights_params = {**_parameters("weights"), "source": str(tmp_path / "r18.pkl"), "retries": 0}
    catalog = _catalog(tmp_path, weights_params)
    model = _parameters("model")
    deeper = {**model, "backbone": {**model["backbone"], "depth": 34}}
    catalog["params:model"] = _typed_model(deeper)
    hooks = _create_hook_manager()
    hooks.register(ReportOnFailureHook())
    with pytest.raises(WeightsConversionError, match="backbone weight"):
        SequentialRunner().run(create_pipeline(), catalog, hooks)
    report = pd.read_csv(tmp_path / "weights_conversion_report.csv")
    assert (report["status"] == "missing").sum() > 0 and report["target_key"].str.contains("layer").any()


def test_torchvisions_own_state_dict_loads_under_the_torchvision_recipe(tmp_path, caplog):
    """fasterrcnn_resnet50_fpn as torchvision saves it (BatchNorm2d without pretrained weights, so one
    num_batches_tracked per norm) into the recipe's frozen-BN R-50: every weight loads, and the report lists
    the 53 batch counts as ignored, with the reason."""
    torch.manual_seed(0)
    saved = torchvision.models.detection.fasterrcnn_resnet50_fpn(
        weights=None, weights_backbone=None, num_classes=len(CATEGORIES) + 1
    ).state_dict()
    path = tmp_path / "fasterrcnn_resnet50_fpn.pth"
    torch.save(saved, path)
    catalog = _catalog(tmp_path, {**_parameters("weights"), "source": str(path), "retries": 0})
    catalog["params:model"] = _typed_model(_parameters("_recipes")["torchvision"]["model"])
    with caplog.at_level(logging.WARNING):
        SequentialRunner().run(create_pipeline(), catalog)
    assert "weights expect" not in caplog.text and "weights need" not in caplog.text
    report = catalog.load("weights_conversion_report")
    counts = report[report.source_key.str.endswith("num_batches_tracked")]
    assert len(counts) == 53 and set(counts.status) == {"expected_unused"}
    assert set(counts.note) == {FROZEN_BN_BATCH_COUNT}
    assert set(report.status) == {"mapped", "expected_unused"}
    state = catalog.load("initial_weights").state_dict
    assert all(torch.equal(state[key], value) for key, value in saved.items() if key in state)
    assert state.keys() == {key for key in saved if not key.endswith("num_batches_tracked")}


@pytest.mark.parametrize(("recipe", "coco_rows"), [("torchvision", False), ("torchvision_coco", True)])
def test_torchvisions_coco_weights_take_the_rows_of_the_categories_ids(tmp_path, caplog, recipe, coco_rows):
    """A 91-class torchvision detector: the predictor rows of the categories' COCO ids (1, 2, 5), or all 91
    with those ids in `roi_heads.label_rows` (torchvision_coco); a warning for each name that is not COCO's;
    one for frozen BN eps unless it is 0, and one for the scores unless all rows are kept, as torchvision
    runs them."""
    torch.manual_seed(0)
    saved = torchvision.models.detection.fasterrcnn_resnet50_fpn(
        weights=None, weights_backbone=None, num_classes=91
    ).state_dict()
    path = tmp_path / "fasterrcnn_resnet50_fpn_coco-258fb6c6.pth"
    torch.save(saved, path)
    catalog = _catalog(tmp_path, {**_parameters("weights"), "source": str(path), "retries": 0})
    catalog["params:model"] = _typed_model(_parameters("_recipes")[recipe]["model"])
    with caplog.at_level(logging.WARNING):
        SequentialRunner().run(create_pipeline(), catalog)
    assert ("frozen_bn_eps: 0" in caplog.text) != coco_rows
    assert ("predictor_rows: coco_category_ids for its scores" in caplog.text) != coco_rows
    assert "category 'circle' has id 1, COCO's 'person'" in caplog.text
    state = catalog.load("initial_weights").state_dict
    scores = "roi_heads.box_predictor.cls_score.weight"
    if coco_rows:
        assert torch.equal(state[scores], saved[scores])
        assert state["roi_heads.label_rows"].tolist() == [0, 1, 2, 5]
    else:
        assert torch.equal(state[scores], saved[scores][[0, 1, 2, 5]])
        assert "roi_heads.label_rows" not in state


def test_coco_category_rows_from_random_weights_need_coco_ids(tmp_path):
    """`weights.source: none` with predictor_rows coco_category_ids: the rows come from the categories too,
    and a category id outside 1..90 is an error naming it."""
    model = {"backbone": {"depth": 18}, "roi_heads": {"predictor_rows": "coco_category_ids"}}
    catalog = _catalog(tmp_path, {**_parameters("weights"), "source": "none"})
    catalog["params:model"] = _typed_model(model)
    SequentialRunner().run(create_pipeline(), catalog)
    assert catalog.load("initial_weights").state_dict["roi_heads.label_rows"].tolist() == [0, 1, 2, 5]
    report = catalog.load("weights_conversion_report")
    assert report.set_index("target_key").loc["roi_heads.label_rows", "source_key"] == "categories"
    categories = catalog.load("categories")
    categories.loc[0, "category_id"] = 91
    catalog["categories"] = MemoryDataset(categories)
    with pytest.raises(Exception, match=r"category ids 1-90 only.*id\(s\) \[91\]"):
        SequentialRunner().run(create_pipeline(), catalog)
