"""The ingest pipeline: its nodes in memory on tmp data, and one real `kedro run` in a tmp project copy."""

import hashlib
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
from kedro.io import DataCatalog, MemoryDataset
from kedro.runner import SequentialRunner
from kedro_datasets.pandas import ParquetDataset
from matplotlib.figure import Figure

from frcnn_pipeline.config import IngestParams, ModelParams, RuntimeParams
from frcnn_pipeline.data import demo
from frcnn_pipeline.framework.parameter_docs import load_parameters
from frcnn_pipeline.pipelines.ingest import create_pipeline
from frcnn_pipeline.pipelines.ingest.nodes import locate_dataset
from frcnn_pipeline.pipelines.shape import PipelineShape

PROJECT = Path(__file__).resolve().parents[3]
SMALL_DEMO = {"image_size": 64, "num_train_images": 10, "num_val_images": 4}


def ingest_params(tmp_path: Path, **dotted) -> IngestParams:
    """The project's real `ingest` parameters (conf/base) with `--params`-style dotted overrides, validated
    (as the nodes get them).

    The demo always goes to tmp_path, so no test writes into the repository's data/ folder.
    """
    runtime: dict = {}
    for key, value in {"ingest.demo.output_dir": str(tmp_path / "demo"), **dotted}.items():
        *parents, leaf = key.split(".")
        node = runtime
        for parent in parents:
            node = node.setdefault(parent, {})
        node[leaf] = value
    return IngestParams.parse(load_parameters("base", runtime_params=runtime)["ingest"], "ingest")


class KeptDataset(MemoryDataset):
    """A MemoryDataset the runner cannot release, so that the test can load every output afterwards."""

    def _release(self) -> None:
        pass


def run_in_memory(params: IngestParams, tmp_path: Path) -> DataCatalog:
    """Runs the nodes, in the shape ``params`` declares, on MemoryDatasets; `categories` goes through parquet,
    as in a real run (and stays)."""
    pipeline = create_pipeline(PipelineShape.of(params, RuntimeParams()))
    catalog = DataCatalog({name: KeptDataset() for name in pipeline.datasets() if name != "params:ingest"})
    catalog["params:ingest"] = MemoryDataset(params, copy_mode="assign")
    model = ModelParams.parse(load_parameters("base")["model"], "model")
    catalog["params:model"] = MemoryDataset(model, copy_mode="assign")
    catalog["categories"] = ParquetDataset(filepath=str(tmp_path / "categories.parquet"))
    SequentialRunner().run(pipeline, catalog)
    return catalog


def test_pipeline_shape():
    pipeline = create_pipeline()
    shared = {
        "train_images", "train_annotations", "val_images", "val_annotations", "categories",
        "validation_report", "validation_summary", "val_ground_truth",
    }  # fmt: skip
    assert shared <= pipeline.all_outputs()
    # The dataset statistics compare the boxes with the model's resize and anchors.
    assert pipeline.inputs() == {"params:ingest", "params:model"}
    assert all("ingest" in node.tags for node in pipeline.nodes)


def test_demo_end_to_end_in_memory(tmp_path):
    params = ingest_params(tmp_path, **{f"ingest.demo.{key}": value for key, value in SMALL_DEMO.items()})
    assert params.data_root is None  # the demo is the default
    catalog = run_in_memory(params, tmp_path)

    assert (tmp_path / "demo" / "manifest.json").is_file()
    train_images, val_images = catalog.load("train_images"), catalog.load("val_images")
    assert len(train_images) == 10 and len(val_images) == 4
    assert catalog.load("categories")["category_id"].tolist() == [1, 2, 3, 5]
    ground_truth = catalog.load("val_ground_truth")
    assert len(ground_truth["annotations"]) == len(catalog.load("val_annotations"))
    report = catalog.load("validation_report")
    # The demo is clean: only notes (non-contiguous ids; a category a tiny split may not use).
    assert set(report["severity"]) == {"reported"}
    assert (report["check"] == "noncontiguous_category_ids").sum() == 2
    summary = catalog.load("validation_summary")
    assert summary["total_findings"] == len(report)
    assert summary["splits"]["val"]["by_check"]["noncontiguous_category_ids"]["count"] == 1
    # The data a run was made from: the annotation file's sha256 and what was kept of it.
    fingerprint = summary["fingerprints"]["train"]
    raw = demo.annotation_file(tmp_path / "demo", "train").read_bytes()
    assert fingerprint["sha256"] == hashlib.sha256(raw).hexdigest()
    assert (fingerprint["images_declared"], fingerprint["images_kept"], fingerprint["images_dropped"]) == (
        10,
        10,
        0,
    )
    assert fingerprint["annotations_kept"] == len(catalog.load("train_annotations"))

    statistics = catalog.load("dataset_statistics")["splits"]
    assert statistics["train"]["images"] == 10 and statistics["val"]["images"] == 4
    classes = catalog.load("dataset_class_statistics")
    train_annotations = catalog.load("train_annotations")
    assert classes.loc[classes["split"] == "train", "boxes"].sum() == len(train_annotations)
    assert statistics["train"]["anchor_coverage"]["boxes"] == len(train_annotations)
    quantities = catalog.load("dataset_box_statistics")
    assert set(quantities["quantity"]) == {"width", "height", "sqrt_area", "aspect_ratio", "best_anchor_iou"}
    for plot in (
        "dataset_class_balance",
        "dataset_objects_per_image",
        "dataset_image_sizes",
        "dataset_box_sizes",
    ):
        assert isinstance(catalog.load(plot), Figure)


def write_coco_tree(root: Path, annotation_file: str, image_dir: str, split: str, source: Path) -> None:
    """Copies one demo split into another layout, adding a bad annotation to show the report."""
    coco = json.loads(demo.annotation_file(source, split).read_text())
    coco["annotations"].append({"id": 999_999, "image_id": 12345, "category_id": 1, "bbox": [1, 1, 5, 5]})
    shutil.copytree(demo.image_dir(source, split), root / image_dir)
    (root / annotation_file).parent.mkdir(parents=True, exist_ok=True)
    (root / annotation_file).write_text(json.dumps(coco))


@pytest.mark.parametrize(
    "layout",
    [
        {},  # COCO 2017, the default split parameters
        {
            "ingest.splits.train.annotation_file": "train/_annotations.coco.json",
            "ingest.splits.train.image_dir": "train",
            "ingest.splits.val.annotation_file": "valid/_annotations.coco.json",
            "ingest.splits.val.image_dir": "valid",
        },  # a Roboflow export
    ],
    ids=["coco2017", "roboflow"],
)
def test_data_root_from_parameters(tmp_path, layout):
    source = tmp_path / "source"
    demo.generate_demo_dataset(source, demo.DemoConfig(**SMALL_DEMO))
    root = tmp_path / "dataset"
    params = ingest_params(tmp_path, **{"ingest.data_root": str(root), **layout})
    splits = params.splits  # with the defaults the layout leaves out
    for split, paths in (("train", splits["train"]), ("val", splits["val"])):
        write_coco_tree(root, paths.annotation_file, paths.image_dir, split, source)

    catalog = run_in_memory(params, tmp_path)

    assert not (tmp_path / "demo").exists()
    images = catalog.load("train_images")
    assert images["path"].str.startswith(str(root.resolve())).all()
    report = catalog.load("validation_report")
    unknown = report[report["check"] == "unknown_image"]
    assert unknown["split"].tolist() == ["train", "val"] and set(unknown["annotation_id"]) == {999_999}
    assert 999_999 not in catalog.load("val_annotations")["annotation_id"].tolist()
    fingerprint = catalog.load("validation_summary")["fingerprints"]["val"]
    assert fingerprint["annotations_dropped"] == 1
    assert fingerprint["annotations_declared"] == fingerprint["annotations_kept"] + 1


def test_every_evaluation_split_gets_its_own_tables_and_ground_truth(tmp_path):
    source = tmp_path / "source"
    demo.generate_demo_dataset(source, demo.DemoConfig(**SMALL_DEMO))
    root = tmp_path / "dataset"
    layout = {
        "ingest.data_root": str(root),
        "ingest.splits.test.annotation_file": "test/_annotations.coco.json",
        "ingest.splits.test.image_dir": "test",
    }
    params = ingest_params(tmp_path, **layout)
    declared = params.splits  # with the default train and val
    for split, copied_from in (("train", "train"), ("val", "val"), ("test", "val")):
        write_coco_tree(root, declared[split].annotation_file, declared[split].image_dir, copied_from, source)
    shape = PipelineShape.of(params, RuntimeParams())
    assert {"test_images", "test_ground_truth", "val_images"} <= create_pipeline(shape).all_outputs()

    catalog = run_in_memory(params, tmp_path)

    test_images = catalog.load("test_images")
    assert len(test_images) == 4 and test_images["path"].str.contains("/test/").all()
    assert catalog.load("test_ground_truth")["images"] == catalog.load("val_ground_truth")["images"]
    report = catalog.load("validation_report")
    assert report.loc[report["check"] == "unknown_image", "split"].tolist() == ["train", "val", "test"]


def test_split_sources_are_checked(tmp_path):
    params = ingest_params(tmp_path, **{"ingest.splits.test.annotation_file": "t.json"})
    with pytest.raises(ValueError, match=r"declares \['test'\], but the demo .* has only \['train', 'val'\]"):
        locate_dataset(params)
    params = ingest_params(
        tmp_path, **{"ingest.data_root": str(tmp_path), "ingest.splits.test.image_dir": "t"}
    )
    with pytest.raises(ValueError, match=r"ingest\.splits\.test: annotation_file not set"):
        locate_dataset(params)


def test_missing_data_root_names_the_fix(tmp_path):
    params = ingest_params(tmp_path, **{"ingest.data_root": str(tmp_path / "nowhere")})
    with pytest.raises(FileNotFoundError, match=r"nowhere' is not a folder\. Fix: point data_root"):
        locate_dataset(params)


# What `kedro run --pipeline ingest` reads in a project copy (mlflow.yml: the project's tracking store).
INGEST_CONF = (
    "globals.yml", "parameters_ingest.yml", "parameters_model.yml", "parameters_recipes.yml",
    "catalog_ingest.yml", "catalog_dataset_statistics.yml", "mlflow.yml",
)  # fmt: skip


def test_kedro_run_in_a_project_copy(tmp_path):
    """A real `kedro run --pipeline ingest` in a tmp project copy: files land there, not in the repo."""
    project = tmp_path / "project"
    (project / "conf" / "local").mkdir(parents=True)
    (project / "conf" / "base").mkdir()
    (project / "src").mkdir()  # the package itself comes from the installed (editable) project
    shutil.copy(PROJECT / "pyproject.toml", project)
    for name in INGEST_CONF:
        shutil.copy(PROJECT / "conf" / "base" / name, project / "conf" / "base")
    overrides = ",".join(f"ingest.demo.{key}={value}" for key, value in SMALL_DEMO.items())
    env = {**os.environ, "KEDRO_DISABLE_TELEMETRY": "1"}
    result = subprocess.run(
        [sys.executable, "-m", "kedro", "run", "--pipeline", "ingest", "--params", overrides],
        cwd=project, env=env, capture_output=True, text=True, timeout=300, check=False,
    )  # fmt: skip
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]

    data = project / "data"
    assert pd.read_parquet(data / "03_primary" / "train_images.parquet").shape == (10, 5)
    assert pd.read_parquet(data / "03_primary" / "categories.parquet")["label"].tolist() == [0, 1, 2, 3]
    assert json.loads((data / "03_primary" / "val_ground_truth.json").read_text())["categories"][3]["id"] == 5
    report = pd.read_csv(data / "08_reporting" / "validation_report.csv")
    assert list(report.columns) == ["split", "severity", "check", "image_id", "annotation_id", "message"]
    summary = json.loads((data / "08_reporting" / "validation_summary.json").read_text())
    assert summary["total_findings"] == len(report) and set(report["severity"]) == {"reported"}
    assert (data / "01_raw" / "demo" / "train2017").is_dir()
    statistics = json.loads((data / "08_reporting" / "dataset_statistics.json").read_text())
    assert statistics["splits"]["val"]["images"] == 4
    assert (data / "08_reporting" / "dataset_box_sizes.png").read_bytes()[:4] == b"\x89PNG"


def test_kedro_run_builds_the_splits_declared_in_parameters(tmp_path):
    """`--params` declaring a `test` split: the session's hook builds the ingest pipeline with it."""
    project = tmp_path / "project"
    (project / "conf" / "local").mkdir(parents=True)
    (project / "conf" / "base").mkdir()
    (project / "src").mkdir()
    shutil.copy(PROJECT / "pyproject.toml", project)
    for name in INGEST_CONF:
        shutil.copy(PROJECT / "conf" / "base" / name, project / "conf" / "base")
    source, root = tmp_path / "source", tmp_path / "dataset"
    demo.generate_demo_dataset(source, demo.DemoConfig(**SMALL_DEMO))
    for split, copied_from in (("train2017", "train"), ("val2017", "val"), ("test", "val")):
        annotation_file = (
            f"annotations/instances_{split}.json" if split != "test" else "test/_annotations.json"
        )
        write_coco_tree(root, annotation_file, split, copied_from, source)
    overrides = (
        f"ingest.data_root={root},ingest.splits.test.annotation_file=test/_annotations.json,"
        "ingest.splits.test.image_dir=test"
    )
    env = {**os.environ, "KEDRO_DISABLE_TELEMETRY": "1"}
    result = subprocess.run(
        [sys.executable, "-m", "kedro", "run", "--pipeline", "ingest", "--params", overrides],
        cwd=project, env=env, capture_output=True, text=True, timeout=300, check=False,
    )  # fmt: skip
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    primary = project / "data" / "03_primary"
    assert pd.read_parquet(primary / "test_images.parquet").shape == (4, 5)
    assert len(json.loads((primary / "test_ground_truth.json").read_text())["images"]) == 4
    assert (primary / "val_ground_truth.json").is_file()
