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
from kedro.config import OmegaConfigLoader
from kedro.io import DataCatalog, MemoryDataset
from kedro.runner import SequentialRunner
from kedro_datasets.pandas import ParquetDataset

from frcnn_pipeline.data import demo
from frcnn_pipeline.pipelines.ingest import create_pipeline
from frcnn_pipeline.pipelines.ingest.nodes import locate_dataset

PROJECT = Path(__file__).resolve().parents[3]
SMALL_DEMO = {"image_size": 64, "num_train_images": 10, "num_val_images": 4}


def ingest_params(tmp_path: Path, **dotted) -> dict:
    """The project's real `ingest` parameters (conf/base) with `--params`-style dotted overrides.

    The demo always goes to tmp_path, so no test writes into the repository's data/ folder.
    """
    runtime: dict = {}
    for key, value in {"ingest.demo.output_dir": str(tmp_path / "demo"), **dotted}.items():
        *parents, leaf = key.split(".")
        node = runtime
        for parent in parents:
            node = node.setdefault(parent, {})
        node[leaf] = value
    loader = OmegaConfigLoader(
        conf_source=str(PROJECT / "conf"), base_env="base", default_run_env="local",
        merge_strategy={"parameters": "soft"}, runtime_params=runtime,
    )  # fmt: skip
    return loader["parameters"]["ingest"]


def run_in_memory(params: dict, tmp_path: Path) -> DataCatalog:
    """Runs the nodes on MemoryDatasets; `categories` goes through parquet, as in a real run (and stays)."""
    pipeline = create_pipeline()
    catalog = DataCatalog({name: MemoryDataset() for name in pipeline.datasets() if name != "params:ingest"})
    catalog["params:ingest"] = MemoryDataset(params)
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
    assert pipeline.inputs() == {"params:ingest"}
    assert all("ingest" in node.tags for node in pipeline.nodes)


def test_demo_end_to_end_in_memory(tmp_path):
    params = ingest_params(tmp_path)
    assert params["data_root"] is None  # the demo is the default
    params["demo"].update(SMALL_DEMO)
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
    for split in ("train", "val"):
        split_params = params["splits"][split]
        write_coco_tree(root, split_params["annotation_file"], split_params["image_dir"], split, source)

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


def test_missing_data_root_names_the_fix(tmp_path):
    params = ingest_params(tmp_path, **{"ingest.data_root": str(tmp_path / "nowhere")})
    with pytest.raises(FileNotFoundError, match=r"nowhere' is not a folder\. Fix: point data_root"):
        locate_dataset(params)


def test_kedro_run_in_a_project_copy(tmp_path):
    """A real `kedro run --pipeline ingest` in a tmp project copy: files land there, not in the repo."""
    project = tmp_path / "project"
    (project / "conf" / "local").mkdir(parents=True)
    (project / "conf" / "base").mkdir()
    (project / "src").mkdir()  # the package itself comes from the installed (editable) project
    shutil.copy(PROJECT / "pyproject.toml", project)
    for name in ("globals.yml", "parameters_ingest.yml", "catalog_ingest.yml", "mlflow.yml"):
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
