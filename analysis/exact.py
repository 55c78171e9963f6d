"""Small-sample statistics the intruder claim needs: an interval for a mean count that cannot go below zero, and
an exact permutation p-value for Spearman's rho with the smallest p-value the data's ties allow.

- `count_interval(counts)`: the mean count per run with an exact Poisson (Garwood 1936) interval, widened by the
  over-dispersion when the runs vary more than a Poisson count would (quasi-Poisson). Why this and not the others:
  a Student-t interval goes below zero for counts near zero (the review's complaint: "-0.1 intruders"), and a
  percentile bootstrap over 3 seeds can only take 10 distinct means, so its interval is narrower than three runs
  warrant (it is [0, 0] for three zeros, as if three runs proved the rate is zero). Garwood's interval is exact
  for Poisson counts, never below zero, and for all-zero counts still says how large the rate could be.
- `permutation_rho(x, y)`: scipy.stats.permutation_test over pairings (every one of the n! when n <= 8, else
  9,999 random ones with a fixed seed), two-sided.
- `smallest_p(x, y)` and `runs_needed(x, y)`: with ties, few pairings are distinct, so even a perfect rank
  correlation may not reach p < 0.05; they say how small p can get and how many runs (with ties in the same
  proportion) it would take.
"""

from __future__ import annotations

import itertools
import math
from collections import Counter
from collections.abc import Sequence

import numpy as np
from scipy import stats

EXACT_MAX_N = 8            # 8! = 40,320 pairings: enumerated; above that, random ones
RANDOM_RESAMPLES = 9_999


def count_interval(counts: Sequence[float], confidence: float = 0.95) -> tuple[float, float, float]:
    """(mean, low, high) of the mean count per run: Garwood's exact Poisson interval for the total over the runs,
    divided by the number of runs; when the runs' variance exceeds their mean (dispersion phi > 1) the total and
    the run count are both divided by phi first (quasi-Poisson), which widens the interval by about sqrt(phi).
    low >= 0 always; (nan, nan, nan) for no runs."""
    x = np.asarray([c for c in counts if c is not None and not math.isnan(c)], dtype=float)
    if x.size == 0:
        return math.nan, math.nan, math.nan
    n, total = x.size, float(x.sum())
    mean = total / n
    phi = float(x.var(ddof=1)) / mean if n > 1 and mean > 0 else 1.0
    phi = max(phi, 1.0)
    k, runs = total / phi, n / phi   # effective Poisson count and exposure
    alpha = 1 - confidence
    low = 0.0 if k == 0 else stats.chi2.ppf(alpha / 2, 2 * k) / 2
    high = stats.chi2.ppf(1 - alpha / 2, 2 * k + 2) / 2
    return mean, float(low / runs), float(high / runs)


def _spearman(x: np.ndarray, y: np.ndarray, axis: int = -1) -> np.ndarray:
    """Spearman's rho along `axis` (the ranks of x and y with average ranks for ties; Pearson on them)."""
    rx = stats.rankdata(x, axis=axis)
    ry = stats.rankdata(y, axis=axis)
    rx = rx - rx.mean(axis=axis, keepdims=True)
    ry = ry - ry.mean(axis=axis, keepdims=True)
    den = np.sqrt((rx ** 2).sum(axis=axis) * (ry ** 2).sum(axis=axis))
    with np.errstate(invalid="ignore", divide="ignore"):
        return (rx * ry).sum(axis=axis) / den


def permutation_rho(x: Sequence[float], y: Sequence[float]) -> tuple[float, float, bool]:
    """(rho, two-sided p, exact): Spearman's rho and its permutation p-value (scipy.stats.permutation_test,
    permutation_type="pairings"): exact (all n! pairings) for n <= 8, else 9,999 random pairings (seed 0).
    rho and p are nan when either variable is constant or there are fewer than 3 pairs."""
    x, y = np.asarray(x, dtype=float), np.asarray(y, dtype=float)
    n = len(x)
    if n < 3 or np.unique(x).size < 2 or np.unique(y).size < 2:
        return math.nan, math.nan, n <= EXACT_MAX_N
    exact = n <= EXACT_MAX_N
    res = stats.permutation_test((x, y), lambda a, b, axis=-1: _spearman(a, b, axis), vectorized=True,
                                 permutation_type="pairings", alternative="two-sided",
                                 n_resamples=np.inf if exact else RANDOM_RESAMPLES, rng=np.random.default_rng(0))
    return float(res.statistic), float(res.pvalue), exact


def two_sided_p(null: np.ndarray, observed: float) -> float:
    """scipy.stats.permutation_test's two-sided p: twice the smaller tail (each tail counting ties), at most 1."""
    tol = 1e-12 + abs(observed) * 1e-12
    return min(1.0, 2 * min(float(np.mean(null <= observed + tol)), float(np.mean(null >= observed - tol))))


def _tie_bound(groups: Sequence[int], n: int) -> float:
    """Smallest two-sided p when one variable is untied and the other has tie groups of these sizes: only the
    within-group orders (prod m_i!) of the best pairing and of its mirror image reach the extreme rho."""
    ways = math.prod(math.factorial(m) for m in groups)
    return min(1.0, 2 * ways / math.factorial(n))


def smallest_p(x: Sequence[float], y: Sequence[float]) -> float:
    """The smallest two-sided permutation p-value any pairing of these x and y values can reach (their ties
    fixed): by enumeration for n <= 8; above that the tie bound of the more tied variable (ties in both lower the
    count of extreme pairings further, so the bound is optimistic)."""
    x, y = np.asarray(x, dtype=float), np.asarray(y, dtype=float)
    n = len(x)
    if n < 3 or np.unique(x).size < 2 or np.unique(y).size < 2:
        return 1.0
    if n <= EXACT_MAX_N:
        perms = np.array(list(itertools.permutations(range(n))))
        rho = _spearman(np.broadcast_to(x, perms.shape), y[perms])
        return float(min(two_sided_p(rho, value) for value in (rho.min(), rho.max())))
    groups = max((list(Counter(x.tolist()).values()), list(Counter(y.tolist()).values())),
                 key=lambda g: math.prod(math.factorial(m) for m in g))
    return _tie_bound(groups, n)


def runs_needed(x: Sequence[float], y: Sequence[float], alpha: float = 0.05, max_runs: int = 200) -> int | None:
    """How many runs could first reach p < alpha if the ties stayed in the same proportion (each tie group of the
    more tied variable keeps its share of the runs; the other variable untied); None beyond `max_runs`."""
    n = len(x)
    if n == 0:
        return None
    shares = max((list(Counter(list(x)).values()), list(Counter(list(y)).values())),
                 key=lambda g: math.prod(math.factorial(m) for m in g))
    for m in range(3, max_runs + 1):
        groups = [g for g in (round(s * m / n) for s in shares if s > 1) if g > 1]
        if sum(groups) >= m:  # every run tied: no correlation to test
            continue
        if _tie_bound(groups, m) < alpha:
            return m
    return None


def rank_test(x: Sequence[float], y: Sequence[float], alpha: float = 0.05) -> dict[str, object]:
    """Everything a rule says about one rank correlation: rho, permutation p (exact or not), n, the smallest p
    these ties allow and, when that is not below `alpha`, the runs it would need (`needs`)."""
    rho, p, exact = permutation_rho(x, y)
    floor = smallest_p(x, y)
    return {"rho": rho, "p": p, "exact": exact, "n": len(x), "p_min": floor,
            "needs": runs_needed(x, y, alpha) if floor >= alpha else None}


def describe_rank_test(test: dict[str, object], alpha: float = 0.05) -> str:
    """`rho +0.77 (exact permutation p 0.5, n=4; cannot reach p<0.05 with these 4 runs: its ties allow p >= 0.5;
    needs about 7 runs)`."""
    rho, p, n = test["rho"], test["p"], test["n"]
    if rho is None or (isinstance(rho, float) and math.isnan(rho)):
        return f"rho undefined (n={n}: a variable is constant)"
    kind = "exact permutation" if test["exact"] else "permutation (9,999 pairings)"
    text = f"rho {rho:+.2f} ({kind} p {p:.3g}, n={n}"
    if test["p_min"] >= alpha:
        needs = test.get("needs")
        text += (f"; cannot reach p<{alpha:g} with these {n} runs: their ties allow p >= {test['p_min']:.3g}"
                 + (f"; needs about {needs} runs with ties in the same proportion" if needs else ""))
    return text + ")"
