"""The main-process-only saving hook: other processes of a multi-node job keep a run's outputs in memory."""

import pandas as pd
import pytest
from kedro.io import DataCatalog, MemoryDataset
from kedro.pipeline import Node, Pipeline
from kedro_datasets.pandas import CSVDataset

from frcnn_pipeline.hooks import MainProcessSavesHooks, NotTheMainProcessError

RUNTIME = {"device": "cpu", "nproc_per_node": 1, "launcher": "auto"}


def _table(rows: int) -> pd.DataFrame:
    return pd.DataFrame({"value": range(rows)})


def _catalog(tmp_path, runtime: dict) -> DataCatalog:
    catalog = DataCatalog(
        {
            "source": CSVDataset(filepath=str(tmp_path / "source.csv")),
            "table": CSVDataset(filepath=str(tmp_path / "table.csv")),
        }
    )
    catalog["params:runtime"] = runtime
    catalog.save("source", pd.DataFrame({"value": [1, 2]}))
    return catalog


PIPELINE = Pipeline(
    [Node(lambda frame: frame.assign(value=frame["value"] * 2), "source", "table", tags="train")]
)


def _run(catalog: DataCatalog, pipeline: Pipeline = PIPELINE) -> None:
    MainProcessSavesHooks().before_pipeline_run({}, pipeline, catalog)
    for node in pipeline.nodes:
        outputs = node.run({name: catalog.load(name) for name in node.inputs})
        for name, data in outputs.items():
            catalog.save(name, data)


def test_a_follower_node_computes_in_memory_and_writes_nothing(tmp_path):
    catalog = _catalog(tmp_path, {**RUNTIME, "num_nodes": 2, "node_rank": 1, "master_addr": "10.0.0.1"})
    _run(catalog)
    assert isinstance(catalog["table"], MemoryDataset)
    assert catalog.load("table")["value"].tolist() == [2, 4], "inputs still load from the shared files"
    assert not (tmp_path / "table.csv").exists()


def test_the_main_node_saves_as_usual(tmp_path):
    catalog = _catalog(tmp_path, {**RUNTIME, "num_nodes": 2, "node_rank": 0})
    _run(catalog)
    assert pd.read_csv(tmp_path / "table.csv")["value"].tolist() == [2, 4]


def test_torchrun_ranks_other_than_0_write_nothing(tmp_path, monkeypatch):
    torchrun = {"RANK": "1", "LOCAL_RANK": "1", "WORLD_SIZE": "2", "LOCAL_WORLD_SIZE": "2", "GROUP_RANK": "0",
                "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": "29400"}  # fmt: skip
    for name, value in torchrun.items():
        monkeypatch.setenv(name, value)
    _run(_catalog(tmp_path, {**RUNTIME, "nproc_per_node": 2}))
    assert not (tmp_path / "table.csv").exists()


def test_a_follower_refuses_the_single_machine_pipelines(tmp_path):
    ingest = Pipeline([Node(lambda frame: frame, "source", "table", name="read_coco", tags="ingest")])
    catalog = _catalog(tmp_path, {**RUNTIME, "num_nodes": 2, "node_rank": 1})
    with pytest.raises(NotTheMainProcessError, match=r"node 1 of 2.*\['read_coco'\].*--pipeline ingest"):
        _run(catalog, ingest)
    assert not (tmp_path / "table.csv").exists()


def test_wrong_launcher_settings_stop_the_run_before_it_starts(tmp_path):
    catalog = _catalog(tmp_path, {**RUNTIME, "num_nodes": 2, "node_rank": 2})
    with pytest.raises(ValueError, match=r"node_rank must be in \[0, 2\)"):
        _run(catalog)
