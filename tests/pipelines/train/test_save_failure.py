"""A disk that fills up while the train outputs are saved: the run ends in a few lines, nothing half-written
is left as a result, and the rerun saves the outputs from the last checkpoint without training again.

The write failure is real: `kedro run` in a subprocess whose file size limit (RLIMIT_FSIZE) drops below the
model's size once the training node has run, so the checkpoints are written and the trained model's save
fails with EFBIG, as on a full disk. The rerun runs in this process, in the same project copy; then evaluate's
check of its inputs (hooks.py, MissingInputsHook: `catalog.exists`) finds the restored model.
"""

from __future__ import annotations

import logging
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from kedro.framework.session import KedroSession
from kedro.framework.startup import bootstrap_project
from kedro_params import TINY_DEMO, cli_params, nested

from frcnn_pipeline.engine.checkpoint import OUTPUTS_SAVED, load_checkpoint, outputs_saved
from frcnn_pipeline.modeling.saved import SavedDetector

PROJECT = Path(__file__).resolve().parents[3]
TINY = {
    **TINY_DEMO,
    "train.log_period": 1,
    "train.eval_period": 1,
    "train.checkpoint.period": 1,
    "train.solver.max_iter": 1,
}
# Above every report and log the failing run writes, below the model (ResNet-18: ~49 MB).
FILE_SIZE_LIMIT = 8 * 2**20
# `kedro run`, whose files may not grow past argv[1] bytes once the train node has returned: the disk is full
# from then on, while Kedro saves the node's outputs.
DISK_FULL_AFTER_TRAINING = """
import resource
import sys

from kedro.framework.hooks import hook_impl

from frcnn_pipeline import settings

LIMIT = int(sys.argv[1])

class DiskFullAfterTraining:
    @hook_impl
    def after_node_run(self, node):
        if node.name.endswith("train_detector"):
            _, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
            resource.setrlimit(resource.RLIMIT_FSIZE, (LIMIT, hard))


settings.HOOKS = (*settings.HOOKS, DiskFullAfterTraining())
from kedro.framework.cli import main

sys.argv = ["kedro", *sys.argv[2:]]
main()
"""


def _run(root: Path, pipelines: list[str]) -> None:
    bootstrap_project(root)
    with KedroSession.create(root, runtime_params=nested(TINY)) as session:
        session.run(pipeline_names=pipelines)


def _versions(folder: Path) -> list[str]:
    return sorted(path.name for path in folder.iterdir()) if folder.is_dir() else []


@pytest.fixture
def project(tmp_path, monkeypatch) -> Path:
    root = tmp_path / "project"
    shutil.copytree(PROJECT / "conf", root / "conf", ignore=shutil.ignore_patterns("local"))
    (root / "conf" / "local").mkdir()
    (root / "src").mkdir()  # the package itself is the one under test, already on the path
    shutil.copy2(PROJECT / "pyproject.toml", root)
    monkeypatch.chdir(root)  # the engine's checkpoint and log folders are relative, as with `kedro run`
    _run(root, ["ingest", "weights"])
    return root


def test_a_disk_full_while_saving_the_model_loses_nothing_and_the_rerun_restores_it(project, caplog):
    models = project / "data" / "06_models"
    run_folder = models / "checkpoints" / "demo"
    env = {**os.environ, "KEDRO_DISABLE_TELEMETRY": "1"}
    env.pop("COLUMNS", None)
    failed = subprocess.run(
        [sys.executable, "-c", DISK_FULL_AFTER_TRAINING, str(FILE_SIZE_LIMIT),
         "run", "--pipeline", "train", "--params", cli_params(TINY)],
        cwd=project, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, timeout=300,
        check=False,
    )  # fmt: skip

    output = failed.stdout.rstrip()
    lines = output.splitlines()
    assert failed.returncode == 1, output[-3000:]
    assert "Traceback" not in output
    # After the training's last line (its progress's closing line): Kedro's and MLflow's closing lines, then
    # the error and the log's path.
    training_done = max(i for i, line in enumerate(lines) if re.search(r"train: \d+ it in ", line))
    after_training = [x for x in lines[training_done + 1 :] if x.strip()]
    assert len(after_training) <= 6, "\n".join(after_training)
    version = r"\d{4}-\d\d-\d\dT\d\d\.\d\d\.\d\d\.\d{3}Z"
    assert re.fullmatch(
        re.escape(f"Error: Cannot write {models}/trained_model.safetensors/")
        + version
        + re.escape(
            "/trained_model.safetensors: File too large. Nothing was saved under that name. Free space (or "
            "raise the file size limit, or fix the folder's permissions), then run the same command again: "
            "it saves the run's outputs from its last checkpoint, without training again."
        ),
        lines[-2],
    ), lines[-2]
    assert lines[-1].startswith("Full traceback: logs/error_")
    # The training is in its checkpoint; no output claims to be a result, no `.partial` is left.
    checkpoint = run_folder / "model_0000001.pth"
    assert load_checkpoint(checkpoint)["iteration"] == 1 and not outputs_saved(checkpoint)
    assert not list((project / "data").rglob("*.partial"))
    assert _versions(models / "trained_model.safetensors") == [], "not even an empty version folder"
    assert not (project / "data" / "08_reporting" / "train").exists()

    with caplog.at_level(logging.WARNING, logger="frcnn_pipeline"):
        _run(project, ["train"])

    assert (
        f"Run 'demo' holds all 1 iterations in {Path('data/06_models/checkpoints/demo', checkpoint.name)} "
        "but its outputs were not all saved (a save failed or was interrupted): saving them from that "
        "checkpoint, without training" in caplog.messages
    )
    [trained_version] = _versions(models / "trained_model.safetensors")
    restored = SavedDetector.from_bytes(
        (models / "trained_model.safetensors" / trained_version / "trained_model.safetensors").read_bytes()
    )
    weights = load_checkpoint(checkpoint)["model"]
    assert restored.state_dict.keys() == weights.keys()
    assert all(torch.equal(restored.state_dict[key], weights[key]) for key in weights), "the trained weights"
    [best_version] = _versions(models / "best_model.safetensors")
    best = SavedDetector.from_bytes(
        (models / "best_model.safetensors" / best_version / "best_model.safetensors").read_bytes()
    )
    assert best.provenance["best"]["iteration"] == 1 and best.state_dict, "from model_best.pth"
    assert sorted(p.name for p in run_folder.glob("model_*")) == ["model_0000001.pth", "model_best.pth"]
    # Complete now: the record that makes a further rerun save nothing.
    assert outputs_saved(checkpoint) and (run_folder / OUTPUTS_SAVED).is_file()

    # What evaluate checks before it starts (MissingInputsHook), and what it loads.
    bootstrap_project(project)
    with KedroSession.create(project, runtime_params=nested(TINY)) as session:
        catalog = session.load_context().catalog
        assert catalog.exists("trained_model")
        assert catalog.load("trained_model").origin["version"] == trained_version
