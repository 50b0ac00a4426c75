"""Records every aten op of a step with its output shapes, and flags the ops that depend on the data's values.

The static-shape mode's proof (tests/modeling/test_static_shapes.py, benchmarks/bench_static_shapes.py):
training steps on different images and objects record the same (op, shapes) sequence and flag nothing.
Flagged, with the line of this project or torchvision that ran them:
- a value read on the host, which waits for the device (`HOST_READS`): `aten._local_scalar_dense` is what
  `.item()`, `bool(t)`, `int(t)` and `float(t)` go through, and `aten.equal` / `aten.is_nonzero` return
  Python values; `.tolist()` and `.numpy()` dispatch no aten op on the CPU, so they are seen as Python
  calls;
- a copy between the host and a device (on a device only: a copy within the CPU dispatches nothing);
- an output shape that follows the values (`DATA_SHAPED`), boolean-mask indexing included;
- a tensor made from host data (`aten.lift_fresh`: `torch.tensor`, `new_tensor`, `as_tensor` of numbers):
  on a device, a host-to-device copy that waits for the device.
"""

from __future__ import annotations

import traceback
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

import torch
from torch import nn
from torch.overrides import TorchFunctionMode
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten

HOST_READS = frozenset({"aten._local_scalar_dense.default", "aten.equal.default", "aten.is_nonzero.default"})
PYTHON_READS = frozenset({"tolist", "numpy"})
DATA_SHAPED = frozenset(
    {
        "aten.nonzero.default",
        "aten.argwhere.default",
        "aten.masked_select.default",
        "aten.bincount.default",
        "aten.unique_dim.default",
        "aten._unique.default",
        "aten._unique2.default",
        "aten.unique_consecutive.default",
        "aten.repeat_interleave.Tensor",
        "aten.repeat_interleave.self_Tensor",
    }
)
INDEXING = frozenset(
    {
        "aten.index.Tensor",
        "aten.index_put.default",
        "aten.index_put_.default",
        "aten._index_put_impl_.default",
    }
)
HOST_DATA = frozenset({"aten.lift_fresh.default", "aten.lift_fresh_copy.default"})
COPIES = frozenset({"aten._to_copy.default", "aten.copy_.default"})
# Frames named in a flag: the first of these, innermost first.
SOURCES = ("frcnn_pipeline", "torchvision")


@dataclass
class StepTrace:
    """`ops`: (aten op, output shapes) in dispatch order; `flagged`: (what, where) of the data-dependent."""

    ops: list[tuple[str, tuple[tuple[int, ...], ...]]] = field(default_factory=list)
    flagged: list[tuple[str, str]] = field(default_factory=list)

    def flagged_counts(self) -> Counter[tuple[str, str]]:
        return Counter(self.flagged)

    def flag(self, what: str) -> None:
        self.flagged.append((what, _caller()))


@contextmanager
def trace_step() -> Iterator[StepTrace]:
    """Records what runs inside the block (forward, backward and optimizer alike) into the yielded trace."""
    trace = StepTrace()
    with _PythonReads(trace), _AtenOps(trace):
        yield trace


def traced_training_step(model: nn.Module, optimizer: torch.optim.Optimizer, inputs: tuple) -> StepTrace:
    """One training step, `model(*inputs)` then the backward and the optimizer's step, traced."""
    with trace_step() as trace:
        optimizer.zero_grad()
        sum(model(*inputs).values()).backward()
        optimizer.step()
    return trace


class _AtenOps(TorchDispatchMode):
    def __init__(self, trace: StepTrace) -> None:
        super().__init__()
        self.trace = trace

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        name = str(func)
        outputs = [t for t in tree_flatten(out)[0] if isinstance(t, torch.Tensor)]
        self.trace.ops.append((name, tuple(tuple(t.shape) for t in outputs)))
        if name in HOST_READS:
            self.trace.flag(f"{name} (a read on the host)")
        elif name in DATA_SHAPED:
            self.trace.flag(f"{name} (a shape from the values)")
        elif name in INDEXING and _has_boolean_index(args):
            self.trace.flag(f"{name} with a boolean mask (a shape from the values)")
        elif name in HOST_DATA:
            self.trace.flag(f"{name} (a tensor of host data)")
        elif name in COPIES and _crosses_the_host(
            args[0] if name == "aten._to_copy.default" else args[1], out
        ):
            self.trace.flag(f"{name} between the host and the device")
        return out


class _PythonReads(TorchFunctionMode):
    def __init__(self, trace: StepTrace) -> None:
        super().__init__()
        self.trace = trace

    def __torch_function__(self, func, types, args=(), kwargs=None):
        name = getattr(func, "__name__", "")
        if name in PYTHON_READS:
            self.trace.flag(f"Tensor.{name} (a read on the host)")
        return func(*args, **(kwargs or {}))


def _has_boolean_index(args: tuple) -> bool:
    indices = args[1] if len(args) > 1 and isinstance(args[1], (list, tuple)) else ()
    return any(
        isinstance(index, torch.Tensor) and index.dtype in (torch.bool, torch.uint8) for index in indices
    )


def _crosses_the_host(source: torch.Tensor, copy: torch.Tensor) -> bool:
    return source.device.type != copy.device.type and "cpu" in (source.device.type, copy.device.type)


def _caller() -> str:
    for frame in reversed(traceback.extract_stack()):
        if frame.filename != __file__ and any(f"/{source}/" in frame.filename for source in SOURCES):
            return f"{frame.filename.rsplit('/', 2)[-2]}/{frame.filename.rsplit('/', 1)[-1]}:{frame.lineno}"
    return "?"
