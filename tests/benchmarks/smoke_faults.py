"""Faults the smoke test must catch, injected with `smoke_accelerator.main(argv, instrument=...)`.

Each takes the model a worker built (after the smoke test's watch is attached). Module-level functions, so
that spawned workers can unpickle them.
"""

from __future__ import annotations

import os
import time
import warnings
from collections.abc import Callable

from torch import nn
from torch.utils._pytree import tree_map

from frcnn_pipeline.runtime import distributed

PYTHON_FALLBACK = "box_head's op will fall back to CPU (injected by the smoke test's test)"
# What torch_npu's C++ warning handler writes straight to file descriptor 2 (not a Python warning).
TORCH_NPU_FALLBACK_LINE = (
    b"[W1206 10:00:00.000000000 VariableFallbackKernel.cpp:250] Warning: CAUTION: The operator "
    b"'aten::smoke_injected_op' is not currently supported on the NPU backend and will fall back to run "
    b"on the CPU. This may have performance implications. (function npu_cpu_fallback)\n"
)


def _around_forward(module: nn.Module, before: Callable[[], object], after=lambda output: output) -> None:
    forward = module.forward

    def wrapped(*args, **kwargs):
        before()
        return after(forward(*args, **kwargs))

    module.forward = wrapped


def report_fallbacks(model: nn.Module) -> None:
    """A Python fallback warning from roi_heads.box_head; torch_npu's fallback line from rpn.head."""
    _around_forward(model.roi_heads.box_head, lambda: warnings.warn(PYTHON_FALLBACK, stacklevel=1))
    _around_forward(model.rpn.head, lambda: os.write(2, TORCH_NPU_FALLBACK_LINE))


def move_box_predictor_output_to_meta(model: nn.Module) -> None:
    """roi_heads.box_predictor's scores and box deltas come out on the meta device."""
    to_meta = lambda output: tree_map(lambda tensor: tensor.to("meta"), output)  # noqa: E731
    _around_forward(model.roi_heads.box_predictor, lambda: None, to_meta)


def _never_return(module: nn.Module, args: tuple) -> None:
    if module.training:
        while True:
            time.sleep(60)


def hang_in_the_first_forward(model: nn.Module) -> None:
    model.register_forward_pre_hook(_never_return)


def hang_rank_one_before_the_collectives(model: nn.Module) -> None:
    """Rank 1 never returns from its first forward, so it never joins the loss all-reduce rank 0 waits in."""
    if distributed.get_rank() == 1:
        model.register_forward_pre_hook(_never_return)
