"""Engine test fixtures."""

import pytest
from tiny_training import write_tiny_dataset


@pytest.fixture(scope="session")
def tiny_tables(tmp_path_factory):
    return write_tiny_dataset(tmp_path_factory.mktemp("tiny_images"), count=8)
