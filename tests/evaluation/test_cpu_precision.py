"""The CPU backbone precision: bfloat16 where the CPU has native bf16 instructions, else float32;
overridable."""

import logging

import pytest
import torch

from frcnn_pipeline.evaluation import cpu_precision


@pytest.mark.parametrize(
    ("instructions", "expected"), [(("AMX", "AVX512-BF16"), torch.bfloat16), ((), torch.float32)]
)
def test_auto_takes_bf16_only_where_the_cpu_has_it_and_says_why(monkeypatch, caplog, instructions, expected):
    monkeypatch.setattr(cpu_precision, "native_bf16_instructions", lambda: instructions)
    with caplog.at_level(logging.INFO, logger=cpu_precision.__name__):
        assert cpu_precision.cpu_dtype("auto") == expected
    assert f"backbone in {expected}" in caplog.text
    assert ("this CPU has AMX and AVX512-BF16" if instructions else "neither") in caplog.text


@pytest.mark.parametrize(("setting", "expected"), [("float32", torch.float32), ("bfloat16", torch.bfloat16)])
def test_the_parameter_overrides_the_cpu(monkeypatch, setting, expected):
    monkeypatch.setattr(cpu_precision, "native_bf16_instructions", lambda: ("AMX",))
    assert cpu_precision.cpu_dtype(setting) == expected


def test_without_torchs_probes_the_kernels_flags_are_read(monkeypatch, tmp_path):
    cpuinfo = tmp_path / "cpuinfo"
    cpuinfo.write_text("processor\t: 0\nflags\t\t: fpu avx512f avx512_bf16 sse\n")
    monkeypatch.setattr(cpu_precision, "_CPUINFO", cpuinfo)
    monkeypatch.delattr(torch.cpu, "_is_amx_tile_supported", raising=False)
    cpu_precision.native_bf16_instructions.cache_clear()
    try:
        assert cpu_precision.native_bf16_instructions() == ("AVX512-BF16",)
    finally:
        cpu_precision.native_bf16_instructions.cache_clear()
