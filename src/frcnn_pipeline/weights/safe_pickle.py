"""Unpickling weights without running code: a .pkl may only rebuild numpy arrays and plain containers."""

import pickle
from pathlib import Path
from typing import Any

from frcnn_pipeline.errors import UserFacingError

# Everything a Detectron/detectron2 weights pickle needs. Plain dicts, lists, tuples and strings are
# rebuilt by pickle opcodes and never reach find_class; any other global could run code.
_ALLOWED_GLOBALS = {
    ("numpy._core.multiarray", "_reconstruct"),
    ("numpy._core.multiarray", "scalar"),
    ("numpy", "ndarray"),
    ("numpy", "dtype"),
    ("collections", "OrderedDict"),
    ("_codecs", "encode"),  # Python 3's protocol-2 encoding of bytes
}
# Pickles written with numpy < 2 (and by Python 2) name numpy's private core module `numpy.core`.
_RENAMED_MODULES = {"numpy.core.multiarray": "numpy._core.multiarray"}


class UnsafePickleError(UserFacingError, pickle.UnpicklingError):
    """A pickle asked for a global outside the allow-list."""


class WeightsUnpickler(pickle.Unpickler):
    """Rebuilds only numpy arrays and plain containers; refuses every other global, naming it."""

    def __init__(self, file, source_name: str) -> None:
        super().__init__(file, encoding="latin1")  # Python 2 cPickle wrote array payloads as str
        self.source_name = source_name

    def find_class(self, module: str, name: str) -> Any:
        module = _RENAMED_MODULES.get(module, module)
        if (module, name) not in _ALLOWED_GLOBALS:
            raise UnsafePickleError(
                f"{self.source_name}: refusing to unpickle global '{module}.{name}'. A weights pickle may "
                "only hold numpy arrays and plain containers; this file could run code when loaded. "
                "Get the weights from a trusted source, or convert them to safetensors."
            )
        return super().find_class(module, name)

    def persistent_load(self, pid: Any) -> Any:
        raise UnsafePickleError(
            f"{self.source_name}: a pickle with persistent ids (a legacy torch.save file?) is not a weights "
            "pickle; save it with torch.save (zip format) or safetensors"
        )


def load_weights_pickle(path: str | Path) -> Any:
    """Load a Detectron/detectron2 `.pkl` with `WeightsUnpickler`."""
    with open(path, "rb") as stream:
        return WeightsUnpickler(stream, str(path)).load()
