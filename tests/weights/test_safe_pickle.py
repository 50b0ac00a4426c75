import io
import os
import pickle
from collections import OrderedDict

import numpy as np
import pytest
from c2_layout import py2_pickle

from frcnn_pipeline.weights import (
    UnsafePickleError,
    WeightsConversionError,
    load_checkpoint,
    load_weights_pickle,
)
from frcnn_pipeline.weights.safe_pickle import CorruptPickleError, WeightsUnpickler


class _RunsACommand:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


def test_a_pickle_that_would_run_a_command_is_refused(tmp_path):
    marker = tmp_path / "pwned"
    path = tmp_path / "R-50.pkl"
    path.write_bytes(pickle.dumps({"conv1_w": np.zeros(3), "payload": _RunsACommand(marker)}, protocol=2))
    pickle.loads(pickle.dumps(_RunsACommand(tmp_path / "control")))  # the payload is real: it does run
    assert (tmp_path / "control").exists()
    with pytest.raises(UnsafePickleError, match=rf"{path}: refusing to unpickle global '(posix|os)\.system'"):
        load_checkpoint(path)
    assert not marker.exists()


def test_python2_protocol2_pickle_with_latin1_strings_loads(tmp_path):
    data = py2_pickle({"conv1_w": np.full((64, 3, 7, 7), -1.5), "res_conv1_bn_s": np.full(64, -1.5)})
    with pytest.raises(UnicodeDecodeError):  # the fixture really is Python 2 style
        pickle.loads(data)
    path = tmp_path / "py2.pkl"
    path.write_bytes(data)
    loaded = load_weights_pickle(path)
    assert set(loaded) == {"conv1_w", "res_conv1_bn_s"}
    assert loaded["conv1_w"].shape == (64, 3, 7, 7) and loaded["conv1_w"].dtype == np.float32
    assert np.all(loaded["res_conv1_bn_s"] == -1.5)


def test_numpy_containers_and_ordered_dicts_load(tmp_path):
    path = tmp_path / "model_final.pkl"
    state = OrderedDict(a=np.arange(6, dtype=np.float32).reshape(2, 3), b=np.float64(2.5))
    path.write_bytes(pickle.dumps({"model": state, "__author__": "Detectron2 Model Zoo", "n": [1, (2, 3)]}))
    loaded = load_checkpoint(path)
    assert loaded["model"]["a"].tolist() == [[0, 1, 2], [3, 4, 5]] and loaded["model"]["b"] == 2.5


def test_other_numpy_globals_are_refused_too():
    # np.load with allow_pickle is a classic way to smuggle code through numpy
    with pytest.raises(UnsafePickleError, match=r"'numpy\.load'"):
        load_weights_pickle_bytes(b"\x80\x02cnumpy\nload\n.")


def load_weights_pickle_bytes(data: bytes):
    from frcnn_pipeline.weights.safe_pickle import WeightsUnpickler

    return WeightsUnpickler(io.BytesIO(data), "inline").load()


def test_torch_checkpoints_load_with_weights_only(tmp_path):
    import torch
    from safetensors.torch import save_file

    state = {"backbone.body.conv1.weight": torch.randn(4, 3, 1, 1)}
    torch.save({"model": state, "iteration": 10}, tmp_path / "model.pth")
    assert torch.equal(
        load_checkpoint(tmp_path / "model.pth")["model"]["backbone.body.conv1.weight"],
        state["backbone.body.conv1.weight"],
    )
    save_file(state, tmp_path / "model.safetensors")
    assert np.array_equal(
        load_checkpoint(tmp_path / "model.safetensors")["backbone.body.conv1.weight"],
        state["backbone.body.conv1.weight"].numpy(),
    )

    marker = tmp_path / "pwned"
    torch.save({"model": state, "payload": _RunsACommand(marker)}, tmp_path / "evil.pth")
    with pytest.raises(
        WeightsConversionError, match=r"evil.pth: not a readable torch checkpoint .*weights_only"
    ):
        load_checkpoint(tmp_path / "evil.pth")
    assert not marker.exists()


@pytest.mark.parametrize("keep", [0, 0.5])
def test_a_truncated_pickle_names_the_file_and_the_fix(tmp_path, keep):
    data = pickle.dumps({"conv1_w": np.zeros((64, 3, 7, 7), np.float32)}, protocol=2)
    path = tmp_path / "R-50.pkl"
    path.write_bytes(data[: int(len(data) * keep)])
    with pytest.raises(
        CorruptPickleError, match=rf"{path}: truncated or corrupt weights pickle .* download it"
    ):
        load_checkpoint(path)


def test_an_upper_case_suffix_is_still_a_pickle(tmp_path):
    path = tmp_path / "R-50.PKL"
    path.write_bytes(pickle.dumps({"conv1_w": np.ones(3, np.float32)}, protocol=2))
    assert load_checkpoint(path)["conv1_w"].tolist() == [1.0, 1.0, 1.0]


@pytest.mark.parametrize("module", ["numpy.core.multiarray", "numpy._core.multiarray"])
def test_both_names_of_numpy_core_load(module):
    array = np.arange(3.0)
    data = pickle.dumps(array, protocol=2).replace(b"numpy._core.multiarray", b"numpy.core.multiarray")
    data = data.replace(b"numpy.core.multiarray", module.encode())
    assert module.encode() in data
    assert WeightsUnpickler(io.BytesIO(data), "x.pkl").load().tolist() == [0.0, 1.0, 2.0]
