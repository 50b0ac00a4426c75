"""Evidence that an op ran on the CPU instead of the accelerator: fallback warnings, Python's and torch_npu's.

torch_npu runs an op that has no NPU kernel through its CPU fallback and only warns ("CAUTION: The operator
'aten::…' is not currently supported on the NPU backend and will fall back to run on the CPU"), once per op
and process, on rank 0 only. It prints that line from C++ straight to file descriptor 2 (its own warning
handler, not Python's `warnings`), so two recorders are needed:
- `FallbackWarnings`: Python warnings whose text says so (MPS-style fallbacks, libraries that warn in Python);
- `StderrCapture`: everything written to file descriptor 2 by this process and the processes it starts,
  passed on to the terminal by a small pump process and kept in a file, whose fallback lines are read at the
  end.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

# torch_npu: "will fall back to run on the CPU"; also "falls back to CPU", "fallback to cpu", "CPU fallback".
FALLBACK_PATTERN = re.compile(r"fall(?:s|ing)?[ -]?back to (?:run on )?(?:the )?cpu|cpu[ -]fallback", re.I)
# For `warnings.filterwarnings`, which matches the start of the message (and adds re.I itself).
_FALLBACK_FILTER = r"(?s).*(?:fall(?:s|ing)?[ -]?back to (?:run on )?(?:the )?cpu|cpu[ -]fallback)"
_OPERATOR = re.compile(r"operator '([^']+)'")
# The start of a warning c10 prints from C++ (glog's format), e.g. "[W1206 10:00:00.000 File.cpp:250]".
_GLOG_WARNING = re.compile(r"\[W\d{4} ")
# torch_npu sets this to silence its warnings, fallback ones included: the smoke test must see them.
TORCH_NPU_WARNINGS_VARIABLE = "TORCH_NPU_DISABLED_WARNING"

# The pump: stdin is the pipe that replaced fd 2, stdout the original fd 2. It ignores Ctrl-C (the terminal
# sends it to the whole process group) and ends when every writer has closed the pipe.
_PUMP = """
import os, signal, sys
signal.signal(signal.SIGINT, signal.SIG_IGN)
out = sys.stdout.buffer
with open(sys.argv[1], "ab", buffering=0) as kept:
    while chunk := os.read(0, 65536):
        kept.write(chunk)
        try:
            out.write(chunk)
            out.flush()
        except OSError:
            pass
"""


def is_fallback(text: str) -> bool:
    return FALLBACK_PATTERN.search(text) is not None


def fallback_operator(text: str) -> str | None:
    """The op a fallback message names (torch_npu's and MPS's: "The operator 'aten::x' ..."), else None."""
    found = _OPERATOR.search(text)
    return found.group(1) if found else None


def finding(source: str, message: str, where: str) -> dict[str, Any]:
    return {"op": fallback_operator(message), "where": where, "source": source, "message": message.strip()}


class FallbackWarnings:
    """Records the Python warnings that report a CPU fallback (each one, not only the first per place), with
    `locate()` saying where the run was; they are still shown as before."""

    def __init__(self, locate: Callable[[], str]):
        self.locate = locate
        self.found: list[dict[str, Any]] = []
        self._context = warnings.catch_warnings()
        self._previous = warnings.showwarning

    def __enter__(self) -> FallbackWarnings:
        self._context.__enter__()
        warnings.filterwarnings("always", message=_FALLBACK_FILTER)
        self._previous = warnings.showwarning
        warnings.showwarning = self._show
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._context.__exit__(*exc_info)

    def _show(self, message, category, filename, lineno, file=None, line=None) -> None:  # noqa: PLR0917 (showwarning's)
        text = str(message)
        if is_fallback(text):
            where = self.locate()
            self.found.append(finding("python warning", f"{category.__name__}: {text}", where))
        self._previous(message, category, filename, lineno, file, line)


class StderrCapture:
    """Sends file descriptor 2 (this process's and its children's) through a pump process into `path` and on
    to the terminal. `mark(phase)` labels what follows; `fallbacks()`, after the context, lists the fallback
    lines with the phase they came in (approximately: the pump runs alongside)."""

    def __init__(self, path: Path):
        self.path = Path(path)
        self._marks: list[tuple[int, str]] = []
        self._saved_fd: int | None = None
        self._pump: subprocess.Popen | None = None

    def __enter__(self) -> StderrCapture:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.path.touch()
        sys.stderr.flush()
        self._saved_fd = os.dup(2)
        read_end, write_end = os.pipe()
        self._pump = subprocess.Popen(
            [sys.executable, "-c", _PUMP, str(self.path)], stdin=read_end, stdout=self._saved_fd
        )
        os.close(read_end)
        os.dup2(write_end, 2)
        os.close(write_end)
        return self

    def mark(self, phase: str) -> None:
        sys.stderr.flush()
        self._marks.append((self.path.stat().st_size, phase))

    def __exit__(self, *exc_info: object) -> None:
        self.restore()

    def restore(self) -> None:
        """Give fd 2 back; the pump ends once the processes still holding the pipe have closed it."""
        if self._saved_fd is None:
            return
        sys.stderr.flush()
        os.dup2(self._saved_fd, 2)
        os.close(self._saved_fd)
        self._saved_fd = None
        try:
            self._pump.wait(timeout=10)
        except subprocess.TimeoutExpired:  # a straggler (e.g. a loader worker) still holds the pipe
            self._pump.kill()
            self._pump.wait()

    def fallbacks(self) -> list[dict[str, Any]]:
        found, offset = [], 0
        with open(self.path, "rb") as captured:
            for raw in captured:
                phase = next((p for start, p in reversed(self._marks) if start <= offset), "start-up")
                # A progress bar redraws its line after "\r" and may precede a C++ warning on it.
                for segment in raw.decode(errors="replace").rstrip().split("\r"):
                    if is_fallback(segment):
                        glog = _GLOG_WARNING.search(segment)
                        found.append(finding("stderr", segment[glog.start() if glog else 0 :], phase))
                offset += len(raw)
        return found


def merge(*sources: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """One entry per fallback, from the first (most precise) source that has it: a later entry for the same
    op, or whose message is an earlier one's (a Python warning that also reached stderr), is left out."""
    merged: list[dict[str, Any]] = []
    for entry in (entry for source in sources for entry in source):
        if not any(_same_fallback(kept, entry) for kept in merged):
            merged.append(entry)
    return merged


def _same_fallback(kept: dict[str, Any], entry: dict[str, Any]) -> bool:
    if kept["op"] is not None or entry["op"] is not None:
        return kept["op"] == entry["op"]
    text = kept["message"].split(": ", 1)[-1]  # without the warning's category
    return text in entry["message"] or entry["message"] in kept["message"]
