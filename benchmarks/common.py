"""What the harness wrapper and the plain reference measure alike: per-step wall time and phase timings.

Both sides of a comparison are timed by the same callback, so a ratio compares the training, not the clocks.
"""

from __future__ import annotations

import json
import statistics
import time
from pathlib import Path
from typing import Any

from transformers import TrainerCallback

WARMUP_STEPS = 2  # the first steps pay for allocator growth and oneDNN kernel selection; left out of the median


class StepTimer(TrainerCallback):
    """Wall time of every optimizer step (forward, backward, optimizer, data collation of that step)."""

    def __init__(self) -> None:
        self.times: list[float] = []
        self._start: float | None = None

    def on_step_begin(self, args, state, control, **kwargs):
        self._start = time.perf_counter()

    def on_step_end(self, args, state, control, **kwargs):
        if self._start is not None:
            self.times.append(time.perf_counter() - self._start)

    def summary(self) -> dict[str, Any]:
        """Median step time after warm-up (all steps when there are too few to drop any)."""
        steady = self.times[WARMUP_STEPS:] or self.times
        return {"step_s_median": statistics.median(steady) if steady else None,
                "step_s_all": [round(t, 3) for t in self.times]}


class PhaseClock:
    """Named, possibly repeated phases of one process; totals in seconds."""

    def __init__(self) -> None:
        self.totals: dict[str, float] = {}

    def wrap(self, name: str, fn):
        """`fn` with its wall time added to phase `name` on every call."""

        def timed(*args, **kwargs):
            t0 = time.perf_counter()
            try:
                return fn(*args, **kwargs)
            finally:
                self.totals[name] = self.totals.get(name, 0.0) + time.perf_counter() - t0

        timed.__wrapped__ = fn
        return timed

    def add(self, name: str, seconds: float) -> None:
        self.totals[name] = self.totals.get(name, 0.0) + seconds


def write_json(path: Path | str, payload: dict[str, Any]) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(payload, indent=2, default=str))
