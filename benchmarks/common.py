"""What the harness wrapper and the plain reference measure alike: per-step wall time.

Both sides of a comparison are timed by the same callback, so a ratio compares the training, not the clocks.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from harness import measure


class StepTimer(measure.StepTimer):
    """The harness's own step timer (harness.measure.StepTimer, which a run's `phases_s.train_step_median` comes
    from), with every step's time for the report."""

    def summary(self) -> dict[str, Any]:
        return {"step_s_median": self.median(), "step_s_all": [round(t, 3) for t in self.times]}


def write_json(path: Path | str, payload: dict[str, Any]) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(payload, indent=2, default=str))
