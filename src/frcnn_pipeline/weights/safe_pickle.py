"""Unpickling weights without running code: a .pkl may only rebuild numpy arrays and plain containers."""

import importlib.util
import pickle
from pathlib import Path
from typing import Any

from frcnn_pipeline.errors import UserFacingError

# Everything a Detectron/detectron2 weights pickle needs. Plain dicts, lists, tuples and strings are
# rebuilt by pickle opcodes and never reach find_class; any other global could run code.
# numpy 2 (and 1.26.1+) names its private core module `numpy._core`; older numpy and the pickles it wrote
# (and Python 2's) say `numpy.core`. Either name resolves to the module this numpy has.
_MULTIARRAY = f"{'numpy._core' if importlib.util.find_spec('numpy._core') else 'numpy.core'}.multiarray"
_RENAMED_MODULES = {"numpy.core.multiarray": _MULTIARRAY, "numpy._core.multiarray": _MULTIARRAY}
_ALLOWED_GLOBALS = {
    (_MULTIARRAY, "_reconstruct"),
    (_MULTIARRAY, "scalar"),
    ("numpy", "ndarray"),
    ("numpy", "dtype"),
    ("collections", "OrderedDict"),
    ("_codecs", "encode"),  # Python 3's protocol-2 encoding of bytes
}


class UnsafePickleError(UserFacingError, pickle.UnpicklingError):
    """A pickle asked for a global outside the allow-list."""


class CorruptPickleError(UserFacingError, ValueError):
    """A weights pickle that ends early or is not a pickle at all."""


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
        try:
            return WeightsUnpickler(stream, str(path)).load()
        except UnsafePickleError:
            raise
        except (pickle.UnpicklingError, EOFError, ValueError, TypeError) as error:
            raise CorruptPickleError(
                f"{path}: truncated or corrupt weights pickle ({type(error).__name__}: {error}). "
                "Delete the file and download it again."
            ) from error
