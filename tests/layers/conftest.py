"""Every test starts and ends with the default detection-ops setting (auto)."""

import pytest

from frcnn_pipeline.layers import backend


@pytest.fixture(autouse=True)
def _auto_detection_ops():
    backend.configure("auto")
    yield
    backend.configure("auto")
