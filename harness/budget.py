"""Has a training budget converged? The rule: a validation curve has flattened when the last 20% of training
gains less than the interval half-width the study resolves differences with (a longer budget could then not move
the score by a difference the study would call real).

A curve is a run record's `val_curve` (points `{"step", "val_score", ...}`, each scored on the same
`train.eval_subset` validation rows) or plain (step, score) pairs. The score where the tail starts (at 80% of the
budget) is linearly interpolated between the two curve points around it; for a curve that rises ever more slowly
(concave) this over-states the tail's gain, so the rule errs towards "not flattened".
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

TAIL = 0.2  # the last fifth of training


def curve_points(curve: Iterable[Any] | None) -> list[tuple[int, float]]:
    """(step, score) pairs sorted by step from a record's `val_curve` (dicts) or from pairs; non-finite scores
    (a diverged run) are kept as NaN so a comparison can rank them last."""
    points = []
    for point in curve or ():
        if isinstance(point, Mapping):
            step, score = point.get("step"), point.get("val_score", point.get("score"))
        else:
            step, score = point[0], point[1]
        if step is None:
            continue
        value = float(score) if isinstance(score, (int, float)) and not isinstance(score, bool) else math.nan
        points.append((int(step), value if math.isfinite(value) else math.nan))
    return sorted(points)


def score_at(points: Sequence[tuple[int, float]], step: float) -> float | None:
    """The curve's score at `step`, linearly interpolated between the points around it; None outside the curve."""
    for (s0, v0), (s1, v1) in zip(points, points[1:]):
        if s0 <= step <= s1:
            return v0 if s1 == s0 else v0 + (v1 - v0) * (step - s0) / (s1 - s0)
    if points and points[-1][0] == step:
        return points[-1][1]
    return None


@dataclass(frozen=True)
class Flatness:
    """The verdict on one curve: `flattened` is None when the curve cannot tell (see `reason`)."""
    flattened: bool | None
    gain: float | None       # score at the end minus the (interpolated) score where the tail starts
    tail_start: float        # the step where the last `TAIL` of training starts
    end_step: int | None
    half_width: float
    reason: str = ""


def has_flattened(curve: Iterable[Any] | None, half_width: float, budget_steps: int | None = None,
                  tail: float = TAIL) -> Flatness:
    """Whether the last `tail` of training (from `(1 - tail) * budget_steps` to the curve's end; the budget
    defaults to the curve's last step) gains less than `half_width`."""
    if not (half_width >= 0 and math.isfinite(half_width)):
        raise ValueError(f"half_width must be a finite number >= 0, got {half_width}")
    if not 0 < tail < 1:
        raise ValueError(f"tail must lie between 0 and 1, got {tail}")
    points = curve_points(curve)
    end = points[-1][0] if points else None
    budget = budget_steps if budget_steps is not None else end
    start = (1 - tail) * budget if budget else math.nan
    if len(points) < 2:
        why = "no validation curve (train.eval_subset 0)" if not points else "one curve point"
        return Flatness(None, None, start, end, half_width, why)
    if end < budget:
        return Flatness(None, None, start, end, half_width, f"the curve ends at step {end}, before the budget {budget}")
    before = score_at(points, start)
    if before is None:
        return Flatness(None, None, start, end, half_width,
                        f"no curve point at or before step {start:g}, where the tail starts (first at {points[0][0]})")
    gain = points[-1][1] - before
    if math.isnan(gain):
        return Flatness(None, None, start, end, half_width, "a non-finite score in the tail")
    return Flatness(gain < half_width, gain, start, end, half_width)
