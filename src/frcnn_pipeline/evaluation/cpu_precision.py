"""The backbone's precision on CPU: bfloat16 where the CPU computes it natively, float32 elsewhere.

bfloat16 autocast pays on CPUs with AVX512-BF16 or AMX (oneDNN runs the convolutions on them); elsewhere it
is emulated and slower than float32. `evaluate.inference.cpu_precision` / `predict.inference.cpu_precision`
override the choice.
"""

from __future__ import annotations

import logging
from functools import cache
from pathlib import Path

import torch

from frcnn_pipeline.console.detail import DETAIL

log = logging.getLogger(__name__)

AUTO, FLOAT32, BFLOAT16 = "auto", "float32", "bfloat16"
_CPUINFO = Path("/proc/cpuinfo")


@cache
def native_bf16_instructions() -> tuple[str, ...]:
    """The bfloat16 instruction sets of this CPU among AMX and AVX512-BF16 (empty: none)."""
    # torch reports AMX as a whole (tiles); every CPU with AMX so far has its bf16 unit (amx_bf16)
    checks = {"AMX": "_is_amx_tile_supported", "AVX512-BF16": "_is_avx512_bf16_supported"}
    if all(hasattr(torch.cpu, check) for check in checks.values()):  # torch's cpuinfo, any OS
        return tuple(name for name, check in checks.items() if getattr(torch.cpu, check)())
    flags = set()
    if _CPUINFO.exists():  # older torch: the kernel's flags (Linux)
        for line in _CPUINFO.read_text().splitlines():
            if line.startswith("flags"):
                flags.update(line.split(":", 1)[1].split())
                break
    return tuple(
        name for name, flag in (("AMX", "amx_bf16"), ("AVX512-BF16", "avx512_bf16")) if flag in flags
    )


def cpu_dtype(setting: str) -> torch.dtype:
    """The dtype of the backbone on CPU for ``setting`` (auto, float32 or bfloat16); the choice is logged."""
    if setting == FLOAT32:
        dtype, reason = torch.float32, "cpu_precision: float32"
    elif setting == BFLOAT16:
        dtype, reason = torch.bfloat16, "cpu_precision: bfloat16"
    elif native_bf16_instructions():
        dtype, reason = torch.bfloat16, f"auto: this CPU has {' and '.join(native_bf16_instructions())}"
    else:
        dtype, reason = torch.float32, "auto: this CPU has neither AMX nor AVX512-BF16"
    log.info(
        "CPU inference precision: backbone in %s (%s); the heads in float32", dtype, reason, extra=DETAIL
    )
    return dtype
