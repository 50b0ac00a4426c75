"""A write that fails for real (the file size limit, RLIMIT_FSIZE, as a full disk): each of the project's
datasets ends in a one-line `OutputWriteError` naming the file, leaves no `.partial` file or empty version
folder behind, and the earlier version stays the latest one that loads."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest
import torch
from kedro.io import Version
from PIL import Image

from frcnn_pipeline.datasets import DetectorDataset, ImageFolderDataset, KeepUnchangedDataset
from frcnn_pipeline.modeling.saved import TRAINED_MODEL, SavedDetector

LIMIT = 64 * 1024  # bytes: above the first versions below, under the second ones
FIRST, SECOND = "2026-01-01T00.00.00.000Z", "2026-01-02T00.00.00.000Z"
CSV = {"type": "pandas.CSVDataset", "save_args": {"index": False}}
# Saves each dataset's second version under the limit; prints {case: [error type, message, user-facing]}.
SAVE_UNDER_THE_LIMIT = """
import json, resource, sys

import numpy as np
import pandas as pd
import torch
from kedro.io import Version
from PIL import Image

from frcnn_pipeline.datasets import DetectorDataset, ImageFolderDataset, KeepUnchangedDataset
from frcnn_pipeline.errors import UserFacingError
from frcnn_pipeline.modeling.saved import TRAINED_MODEL, SavedDetector

limit, folder, version = int(sys.argv[1]), sys.argv[2], sys.argv[3]
noise = np.random.default_rng(0).integers(0, 256, (256, 256, 3), dtype=np.uint8)
saves = {
    "detector": lambda: DetectorDataset(
        filepath=f"{folder}/model.safetensors", version=Version(None, version)
    ).save(SavedDetector({"w": torch.ones(limit)}, TRAINED_MODEL)),
    "images": lambda: ImageFolderDataset(filepath=f"{folder}/images", version=Version(None, version)).save(
        {"noise": Image.fromarray(noise)}
    ),
    "table": lambda: KeepUnchangedDataset(
        dataset={"type": "pandas.CSVDataset", "filepath": f"{folder}/table.csv"},
        version=Version(None, version),
    ).save(pd.DataFrame({"a": np.arange(limit)})),
}
_, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
resource.setrlimit(resource.RLIMIT_FSIZE, (limit, hard))
results = {}
for case, save in saves.items():
    try:
        save()
    except Exception as error:
        results[case] = [type(error).__name__, str(error), isinstance(error, UserFacingError)]
print(json.dumps(results))
"""


@pytest.fixture(scope="module")
def failed(module_tmp) -> dict:
    folder = module_tmp("full")
    DetectorDataset(filepath=f"{folder}/model.safetensors", version=Version(None, FIRST)).save(
        SavedDetector({"w": torch.zeros(4)}, TRAINED_MODEL)
    )
    ImageFolderDataset(filepath=f"{folder}/images", version=Version(None, FIRST)).save(
        {"noise": Image.fromarray(np.zeros((4, 4, 3), np.uint8))}
    )
    KeepUnchangedDataset(
        dataset={**CSV, "filepath": f"{folder}/table.csv"}, version=Version(None, FIRST)
    ).save(pd.DataFrame({"a": [1]}))
    completed = subprocess.run(
        [sys.executable, "-c", SAVE_UNDER_THE_LIMIT, str(LIMIT), str(folder), SECOND],
        capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
    assert completed.returncode == 0, completed.stderr[-3000:]
    return {"folder": folder, "errors": json.loads(completed.stdout.splitlines()[-1])}


@pytest.mark.parametrize(
    ("case", "written", "then"),
    [
        ("detector", "model.safetensors/{version}/model.safetensors", "run the same command again."),
        ("images", "images/{version}/images", "run the same command again."),
        (
            "table",
            "table.csv/{version}/table.csv",
            "run the same command again: it saves the run's outputs from its last checkpoint, without "
            "training again.",
        ),
    ],
)
def test_a_failed_write_is_one_line_naming_the_file_and_leaves_nothing_half_written(
    failed, case, written, then
):
    folder = failed["folder"]
    error_type, message, user_facing = failed["errors"][case]
    assert (error_type, user_facing) == ("OutputWriteError", True)
    assert message == (
        f"Cannot write {folder}/{written.format(version=SECOND)}: File too large. Nothing was saved under "
        f"that name. Free space (or raise the file size limit, or fix the folder's permissions), then {then}"
    )
    artefact = folder / written.split("/")[0]
    assert sorted(p.name for p in artefact.iterdir()) == [FIRST], "no .partial, no empty version folder"
    assert not list(folder.rglob("*.partial"))


def test_after_a_failed_write_the_earlier_version_is_the_latest(failed):
    folder = failed["folder"]
    model = DetectorDataset(filepath=f"{folder}/model.safetensors", version=Version(None, None)).load()
    assert model.origin["version"] == FIRST and model.state_dict["w"].tolist() == [0.0] * 4
    images = ImageFolderDataset(filepath=f"{folder}/images", version=Version(None, None)).load()
    assert images["noise"]().size == (4, 4)
    table = KeepUnchangedDataset(
        dataset={**CSV, "filepath": f"{folder}/table.csv"}, version=Version(None, None)
    )
    pd.testing.assert_frame_equal(table.load(), pd.DataFrame({"a": [1]}))
