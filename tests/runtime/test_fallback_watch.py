"""Fallback evidence: Python warnings with where they came from, and lines on file descriptor 2 (torch_npu's
C++ warnings) from this process and its children, passed through to the terminal."""

import os
import subprocess
import sys
import time
import warnings

import pytest

from frcnn_pipeline.runtime.fallback_watch import FallbackWarnings, StderrCapture, finding, is_fallback, merge

NPU_LINE = (
    "[W1206 10:00:00.000 VariableFallbackKernel.cpp:250] Warning: CAUTION: The operator 'aten::abs' is not "
    "currently supported on the NPU backend and will fall back to run on the CPU. (function npu_cpu_fallback)"
)


@pytest.mark.parametrize(
    ("text", "fallback"),
    [
        (NPU_LINE, True),
        ("roi_align falls back to CPU", True),
        ("Fallback to cpu for op nms", True),
        ("using the CPU fallback for aten::nonzero", True),
        ("falling back to the default dtype", False),
        ("CPU time: 3 s", False),
    ],
)
def test_what_reads_as_a_cpu_fallback(text, fallback):
    assert is_fallback(text) is fallback


def _wait_until_kept(capture: StderrCapture, text: str) -> None:
    deadline = time.monotonic() + 10
    while text not in capture.path.read_text():
        assert time.monotonic() < deadline, f"the pump never wrote {text!r}"
        time.sleep(0.05)


def test_stderr_lines_of_this_process_and_its_children_are_kept_and_passed_on(tmp_path, capfd):
    with StderrCapture(tmp_path / "stderr.log") as capture:
        capture.mark("probe")
        os.write(2, b"an ordinary line\n")
        # After a progress bar's redraw, as tqdm leaves it on the line.
        printed = f"\rtrain:   0%|          | 0/2 [00:00<?, ?it/s]{NPU_LINE}\n"
        child = f"import os; os.write(2, {printed.encode()!r})"
        subprocess.run([sys.executable, "-c", child], check=True)
        _wait_until_kept(capture, NPU_LINE)
        capture.mark("training")
        os.write(2, b"roi_align falls back to CPU\n")
    assert capture.fallbacks() == [
        finding("stderr", NPU_LINE, "probe"),
        finding("stderr", "roi_align falls back to CPU", "training"),
    ]
    assert capture.fallbacks()[0]["op"] == "aten::abs"
    err = capfd.readouterr().err
    assert "an ordinary line\n" in err and NPU_LINE in err  # the terminal still gets everything
    os.write(2, b"after\n")  # fd 2 is the terminal's again
    assert capfd.readouterr().err == "after\n"


def test_python_fallback_warnings_are_recorded_each_time_with_where_and_still_shown():
    where = ["iteration 1, forward"]
    with warnings.catch_warnings(record=True) as shown:
        warnings.simplefilter("default")
        with FallbackWarnings(lambda: where[0]) as recorder:
            for _ in range(2):  # the same place twice: both recorded
                warnings.warn("nms falls back to CPU", stacklevel=1)
            where[0] = "evaluation"
            warnings.warn("nms falls back to CPU", stacklevel=1)
            warnings.warn("something else", stacklevel=1)
    assert [(entry["where"], entry["message"]) for entry in recorder.found] == [
        ("iteration 1, forward", "UserWarning: nms falls back to CPU"),
        ("iteration 1, forward", "UserWarning: nms falls back to CPU"),
        ("evaluation", "UserWarning: nms falls back to CPU"),
    ]
    assert [str(warning.message) for warning in shown] == ["nms falls back to CPU"] * 3 + ["something else"]


def test_merge_keeps_one_entry_per_fallback_from_its_most_precise_source():
    in_module = finding("python warning", "UserWarning: nms falls back to CPU", "rank 0, iteration 1, in nms")
    in_phase = finding("python warning", "UserWarning: nms falls back to CPU", "training")
    printed = finding("stderr", "model.py:3: UserWarning: nms falls back to CPU", "training")
    npu_warning = finding("python warning", f"UserWarning: {NPU_LINE}", "rank 0, iteration 2, backward")
    npu_line = finding("stderr", NPU_LINE, "training")
    assert merge([in_module], [in_phase, npu_warning], [printed, npu_line]) == [in_module, npu_warning]
