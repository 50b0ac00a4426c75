"""notebooks/analysis.ipynb: committed without outputs, and run top to bottom after a tiny `kedro run`.

The run happens in a copy of the project in tmp_path (it writes data/), with the copy's src/ first on the
path, so the code the notebook loads is the code that was copied. nbclient executes the notebook in the copy's
notebooks/ folder, where the Kedro IPython extension finds the project, as under `kedro jupyter lab`.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import nbformat
import pytest
from nbclient import NotebookClient

PROJECT = Path(__file__).resolve().parents[2]
NOTEBOOK = PROJECT / "notebooks" / "analysis.ipynb"
RUN_TIMEOUT_S = 600
CELL_TIMEOUT_S = 300
# Every stage on a few 64 px images: ingest, weights (random), a few training steps, evaluation and analysis.
TINY_RUN = {
    "ingest.demo.image_size": 64,
    "ingest.demo.num_train_images": 12,
    "ingest.demo.num_val_images": 6,
    "model.input.min_size_train": "[64]",
    "model.input.min_size_test": 64,
    "model.input.max_size": 96,
    "train.images_per_device": 2,
    "train.solver.max_iter": 4,
    "train.solver.warmup_iters": 1,
    "train.solver.steps": "[]",
    "train.log_period": 1,
    "train.checkpoint.period": 4,
    "evaluate.inference.batch_size": 2,
}


def test_committed_notebook_has_no_outputs():
    notebook = nbformat.read(NOTEBOOK, as_version=4)
    nbformat.validate(notebook)
    code = [cell for cell in notebook.cells if cell.cell_type == "code"]
    assert code, "the notebook has no code"
    dirty = [i for i, cell in enumerate(code) if cell.outputs or cell.execution_count is not None]
    assert dirty == [], f"code cells {dirty} carry outputs: clear them before committing (docs/results.md, Notebook)"


def _copy_project(destination: Path) -> Path:
    ignore = shutil.ignore_patterns("__pycache__", "*.egg-info", "*.pyc", ".ipynb_checkpoints")
    shutil.copytree(PROJECT / "src", destination / "src", ignore=ignore)
    shutil.copytree(PROJECT / "conf", destination / "conf", ignore=shutil.ignore_patterns("local"))
    (destination / "conf" / "local").mkdir()
    shutil.copytree(PROJECT / "notebooks", destination / "notebooks", ignore=ignore)
    for name in ("pyproject.toml", ".telemetry"):
        if (PROJECT / name).exists():
            shutil.copy2(PROJECT / name, destination / name)
    return destination


@pytest.fixture
def project_after_a_tiny_run(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    project = _copy_project(tmp_path / "project")
    # The run and the notebook's kernel (which inherits this environment) import the copied code.
    monkeypatch.setenv(
        "PYTHONPATH", os.pathsep.join([str(project / "src"), os.environ.get("PYTHONPATH", "")])
    )
    monkeypatch.setenv("KEDRO_DISABLE_TELEMETRY", "1")
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "xdg"))
    params = ",".join(f"{key}={value}" for key, value in TINY_RUN.items())
    result = subprocess.run(
        [sys.executable, "-m", "kedro", "run", "--params", params],
        cwd=project, capture_output=True, text=True, timeout=RUN_TIMEOUT_S, check=False,
    )  # fmt: skip
    assert result.returncode == 0, (result.stdout + result.stderr)[-6000:]
    return project


def test_notebook_runs_top_to_bottom_on_the_pipeline_outputs(project_after_a_tiny_run: Path):
    notebook_path = project_after_a_tiny_run / "notebooks" / "analysis.ipynb"
    notebook = nbformat.read(notebook_path, as_version=4)
    client = NotebookClient(
        notebook,
        timeout=CELL_TIMEOUT_S,
        kernel_name="python3",
        resources={"metadata": {"path": str(notebook_path.parent)}},
    )
    client.execute()  # raises CellExecutionError, with the cell and its traceback, when a cell fails

    outputs = [output for cell in notebook.cells if cell.cell_type == "code" for output in cell.outputs]
    images = [output for output in outputs if "image/png" in output.get("data", {})]
    # Every figure shown by name, plus the training losses drawn from the metrics table.
    assert len(images) >= 12, f"only {len(images)} figures were shown"
    tables = [output for output in outputs if "text/html" in output.get("data", {})]
    html = "\n".join(output["data"]["text/html"] for output in tables)
    for expected in ("classification", "localisation", "background", "unmatchable_share", "AP50"):
        assert expected in html, f"{expected!r} missing from the notebook's tables"
