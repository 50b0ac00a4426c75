"""Training metrics: rows smoothed over the logging window to JSON lines and the log file; the progress."""

from __future__ import annotations

import json
import logging
import statistics
import time
from pathlib import Path
from typing import Any

from frcnn_pipeline.console.detail import DETAIL
from frcnn_pipeline.console.progress import Progress

log = logging.getLogger(__name__)


class MetricsWriter:
    """Every `period` iterations: a row (losses, LR, images/s, data time, memory, ETA) to JSON lines and logs.

    A row summarises its window as detectron2's metric writers do: each loss is the median over the window's
    iterations (single iterations are too noisy to compare runs), throughput and data time are window means,
    the LR is the last one. Throughput and ETA count the training steps' time only, not the time hooks
    (evaluation, checkpoints) take between them. Only the main process writes; other ranks still time their
    steps (cheap) so the call sites stay uniform.
    """

    def __init__(
        self,
        path: str | Path | None,
        *,
        period: int,
        images_per_iteration: int,
        start_iteration: int,
        max_iter: int,
        enabled: bool,
        history: list[dict[str, Any]] | None = None,
    ):
        self.period = max(1, period)
        self.images_per_iteration = images_per_iteration
        self.max_iter = max_iter
        self.enabled = enabled
        self.rows: list[dict[str, Any]] = list(history or [])
        self.path = Path(path) if path and enabled else None
        if self.path is not None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            # A resumed run rewrites the rows it kept in its checkpoint, so the file matches the run exactly.
            with self.path.open("w", encoding="utf-8") as stream:
                stream.writelines(json.dumps(row) + "\n" for row in self.rows)
        self.progress = Progress("train", max_iter, "it", start_iteration, enabled=enabled)
        self._reset_window()

    def _reset_window(self) -> None:
        self._window_step_time = 0.0
        self._window_iterations = 0
        self._window_data_time = 0.0
        self._window_losses: dict[str, list[float]] = {}

    def step(  # noqa: PLR0917 (one value per measurement)
        self,
        iteration: int,
        losses: dict[str, float],
        lr: float,
        data_time: float,
        step_time: float,
        memory_mb,
    ) -> dict[str, Any] | None:
        """Record finished iteration `iteration` (0-based) that took `step_time` seconds, `data_time` of them
        waiting for data; return the row when one is written (main process).

        `memory_mb` is called only for a written row.
        """
        self._window_iterations += 1
        self._window_data_time += data_time
        self._window_step_time += step_time
        for name, value in losses.items():
            self._window_losses.setdefault(name, []).append(value)
        self.progress.update(1, loss=f"{losses['total_loss']:.3f}", lr=f"{lr:.2e}")
        done = iteration + 1
        if done % self.period and done != self.max_iter:
            return None
        seconds_per_iteration = self._window_step_time / self._window_iterations
        smoothed = {name: statistics.median(values) for name, values in self._window_losses.items()}
        row = {
            "iteration": done,
            **{name: round(value, 6) for name, value in smoothed.items()},
            "lr": lr,
            "images_per_s": round(self.images_per_iteration / seconds_per_iteration, 3),
            "data_time_s": round(self._window_data_time / self._window_iterations, 5),
            "iteration_time_s": round(seconds_per_iteration, 5),
            "memory_mb": round(memory_mb(), 1),
            "eta_s": round(seconds_per_iteration * (self.max_iter - done), 1),
        }
        self._reset_window()
        if not self.enabled:
            return None
        self.rows.append(row)
        if self.path is not None:
            with self.path.open("a", encoding="utf-8") as stream:
                stream.write(json.dumps(row) + "\n")
        # The rows go to the log file; the console's progress shows the loss and LR.
        log.info(
            "iter %d/%d  %s  lr %.3g  %.2f img/s  data %.3fs  mem %.0f MiB  eta %s",
            done,
            self.max_iter,
            "  ".join(f"{name} {value:.4f}" for name, value in smoothed.items()),
            lr,
            row["images_per_s"],
            row["data_time_s"],
            row["memory_mb"],
            time.strftime("%H:%M:%S", time.gmtime(row["eta_s"])),
            extra=DETAIL,
        )
        return row

    def close(self) -> None:
        self.progress.close(finished=self.progress.done >= self.max_iter)
