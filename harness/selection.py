"""Learning-rate grids and the selection rule, shared by the sweeper (which rate the other seeds run at) and the
analysis (which rate a variant is reported at), so both always pick the same one.

- A method file carries `lr_grid: {values, rank_exponent}`: log-spaced rates (its comment says where the range
  comes from); for a rank-dependent scaling the rates at rank r are the values times (1 / r) ** rank_exponent.
- `sweep.lr_search=N` takes the N grid rates centred on the method's default rate.
- Selection: the rate with the best mean validation score, compared over the seeds every tried rate has (the
  search seed of the two-phase protocol; every seed of a full grid), so a rate is never preferred because it was
  averaged over fewer or luckier seeds. Ties go to the smaller rate. Test scores never enter.
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Iterable
from typing import Any

REFERENCE_RANK = 1  # grid values are the rates at r=1


def lr_candidates(method: Any, r: int | None, n: int, default_lr: float) -> list[float]:
    """The `n` rates of the method's grid centred on its default rate, scaled to rank `r`."""
    grid = method.get("lr_grid") if method is not None else None
    if not grid or not grid.get("values"):
        raise ValueError(f"method {method.get('name')} has no lr_grid; add one to conf/method/{method.get('name')}.yaml")
    values = sorted(float(v) for v in grid["values"])
    exponent = float(grid.get("rank_exponent") or 0.0)
    if exponent and r:
        values = [v * (REFERENCE_RANK / r) ** exponent for v in values]
        default_lr = default_lr * (REFERENCE_RANK / r) ** exponent
    n = min(n, len(values))
    centre = min(range(len(values)), key=lambda i: abs(math.log(values[i] / default_lr)))
    start = min(max(centre - (n - 1) // 2, 0), len(values) - n)
    return [float(f"{v:.3g}") for v in values[start:start + n]]


def select_lr(points: Iterable[tuple[float, int, float]]) -> tuple[float | None, dict[float, float], list[int]]:
    """(selected rate, mean validation score per rate over the compared seeds, those seeds) from
    (lr, seed, val_score) points of one variant's usable runs. No usable point: (None, {}, [])."""
    by_lr: dict[float, dict[int, float]] = defaultdict(dict)
    for lr, seed, score in points:
        if score is not None and math.isfinite(score):
            by_lr[float(lr)][int(seed)] = float(score)
    if not by_lr:
        return None, {}, []
    common = set.intersection(*(set(s) for s in by_lr.values()))
    means = {lr: (sum(s[x] for x in common) / len(common)) if common else sum(s.values()) / len(s)
             for lr, s in by_lr.items()}
    best = max(means.values())
    chosen = min(lr for lr, m in means.items() if m == best)
    return chosen, dict(sorted(means.items())), sorted(common)


def at_grid_edge(selected: float | None, tried: Iterable[float]) -> bool:
    """The selected rate is the smallest or largest of two or more tried: the optimum may lie outside."""
    tried = sorted(set(tried))
    return selected is not None and len(tried) >= 2 and selected in (tried[0], tried[-1])
