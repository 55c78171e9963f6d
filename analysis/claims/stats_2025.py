"""Statistics for claims 16-21 (analysis/claims/rules_2025.py): the continuous learning-rate optimum, a seeded
bootstrap over seeds, gain over the floor and the learning-forgetting frontier.

Deliberately small functions on numpy arrays: analysis/bootstrap.py (hierarchical seeds x items intervals, another
branch) is meant to replace `boot_means` / `interval` once it lands; every caller goes through those two.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import pandas as pd

N_BOOT = 2000
BOOT_SEED = 20250929          # fixed: the same records always give the same intervals
CONFIDENCE = 0.95
MIN_SEEDS = 3
MAX_STEP = 2.0 * 1.02         # "a factor-2 grid or finer" (rounding of listed rates such as 6.25e-5 allowed)


def rng() -> np.random.Generator:
    return np.random.default_rng(BOOT_SEED)


def interval(draws: np.ndarray, confidence: float = CONFIDENCE) -> tuple[float, float]:
    """Percentile interval of bootstrap draws (nan-aware). Swap point for analysis/bootstrap.py."""
    draws = np.asarray(draws, float)
    draws = draws[np.isfinite(draws)]
    if draws.size == 0:
        return math.nan, math.nan
    tail = 100 * (1 - confidence) / 2
    low, high = np.percentile(draws, [tail, 100 - tail])
    return float(low), float(high)


def boot_means(values: np.ndarray | list[float], gen: np.random.Generator, n_boot: int = N_BOOT) -> np.ndarray:
    """Means of `n_boot` resamples (with replacement) of per-seed values. Swap point for analysis/bootstrap.py
    (which resamples seeds and the items inside each seed)."""
    x = np.asarray(values, float)
    x = x[np.isfinite(x)]
    if x.size == 0:
        return np.full(n_boot, math.nan)
    return x[gen.integers(0, x.size, size=(n_boot, x.size))].mean(axis=1)


def gain(score: float | np.ndarray, floor: float | np.ndarray, full: float | np.ndarray) -> np.ndarray:
    """Gain over the floor as a share of full FT's: (method - floor) / (full - floor); nan where full <= floor."""
    score, floor, full = (np.asarray(v, float) for v in (score, floor, full))
    span = full - floor
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(span > 0, (score - floor) / np.where(span > 0, span, 1.0), math.nan)


def floor_of(runs: pd.DataFrame, split: str = "test") -> float:
    """The untuned floor of a set of runs: `floor_score` (`floor_val_score`) where the records have it, else the
    base model's score (`base_score` / `base_val_score`)."""
    keys = ("floor_score", "base_score") if split == "test" else ("floor_val_score", "base_val_score")
    for key in keys:
        if key in runs and runs[key].notna().any():
            return float(runs[key].dropna().mean())
    return math.nan


def spread_interval(points: np.ndarray, draws: np.ndarray, confidence: float = CONFIDENCE) -> tuple[float, float]:
    """An interval for the spread (best minus worst) of M means, from simultaneous intervals over their pairwise
    differences: c = the `confidence` quantile of max over pairs |d*_ij - d_ij| across the joint resamples `draws`
    (M, B), the bootstrap max statistic; each true difference lies in d_ij +- c at once, so the true spread lies in
    [max_ij |d_ij| - c, max_ij |d_ij| + c] (low clipped at 0). Why not the percentiles of the resampled spread:
    a maximum of noisy means is biased upward, and its resampled copy more so; with equal true means and 3 noisy
    seeds those percentiles put the whole interval above 2 points (a false refutation, tests/test_claims_2025.py)."""
    points, draws = np.asarray(points, float), np.asarray(draws, float)
    if points.size < 2:
        return math.nan, math.nan
    d_hat = points[:, None] - points[None, :]
    d_star = draws[:, None, :] - draws[None, :, :]                     # (M, M, B)
    dev = np.abs(d_star - d_hat[:, :, None]).reshape(-1, draws.shape[1])
    worst = np.nanmax(dev, axis=0)
    worst = worst[np.isfinite(worst)]
    if worst.size == 0:
        return math.nan, math.nan
    c = float(np.quantile(worst, confidence))
    top = float(np.abs(d_hat).max())
    return max(0.0, top - c), top + c


# ---- the continuous learning-rate optimum (claims 16, 17) ----------------------------------------------------

@dataclass
class Curve:
    """One variant's validation score per (seed, rate): rows = seeds present at every rate."""

    log_lr: np.ndarray       # log10 of the rates, ascending
    scores: np.ndarray       # (n_seeds, n_rates)
    seeds: list[int]

    @property
    def max_step(self) -> float:
        return float(10 ** np.diff(self.log_lr).max()) if self.log_lr.size > 1 else math.inf


def curve(runs: pd.DataFrame, value: str = "val_score") -> Curve:
    """The seeds x rates matrix of one variant's runs (seeds that have every rate; a rate missing from a seed
    drops that seed, so every column averages the same seeds)."""
    table = runs.pivot_table(index="seed", columns="lr", values=value, aggfunc="mean").sort_index(axis=1)
    table = table.dropna(axis=0, how="any")
    return Curve(np.log10(table.columns.to_numpy(float)), table.to_numpy(float), [int(s) for s in table.index])


def fit_optimum(log_lr: np.ndarray, mean: np.ndarray) -> tuple[float, bool]:
    """(log10 of the optimum, whether it is at the grid edge). A quadratic in log10(lr) through the best grid point
    and its two neighbours; its vertex, kept within those neighbours. At an edge (or with a curve that is not
    concave there) the best grid point itself."""
    i = int(np.nanargmax(mean))
    if i == 0 or i == len(mean) - 1:
        return float(log_lr[i]), True
    xs, ys = log_lr[i - 1:i + 2], mean[i - 1:i + 2]
    a, b, _ = np.polyfit(xs, ys, 2)
    if a >= 0:
        return float(log_lr[i]), False
    return float(np.clip(-b / (2 * a), xs[0], xs[-1])), False


@dataclass
class Optimum:
    log_opt: float           # fitted on the mean over seeds
    draws: np.ndarray        # fitted on each bootstrap resample (of the seeds; with item records, seeds and items)
    edge: bool               # the mean curve peaks at an end of the grid
    edge_share: float        # share of resamples peaking at an end
    n_seeds: int
    max_step: float
    how: str = "seeds"       # what the resamples drew

    @property
    def lr(self) -> float:
        return 10 ** self.log_opt

    def lr_interval(self) -> tuple[float, float]:
        low, high = interval(self.draws)
        return 10 ** low, 10 ** high


def optimum(c: Curve, gen: np.random.Generator, n_boot: int = N_BOOT, resampled: np.ndarray | None = None,
            how: str = "seeds") -> Optimum:
    """The fitted optimum of a curve and its bootstrap: each resampled curve (B, rates) refitted. `resampled`
    comes from the caller when it can draw the validation items too (rows_2025.validation_curves); without it the
    seeds are resampled with replacement (at 3 seeds only 10 distinct resamples: a coarse interval)."""
    log_opt, edge = fit_optimum(c.log_lr, c.scores.mean(axis=0))
    n = c.scores.shape[0]
    if resampled is None:
        resampled = np.stack([c.scores[gen.integers(0, n, size=n)].mean(axis=0) for _ in range(n_boot)])
    fits = [fit_optimum(c.log_lr, curve_) for curve_ in resampled]
    draws = np.array([f[0] for f in fits])
    return Optimum(log_opt, draws, edge, float(np.mean([f[1] for f in fits])), n, c.max_step, how)


def ratio(a: Optimum, b: Optimum) -> tuple[float, float, float]:
    """Optimal rate a / b with its bootstrap interval (the two resampled independently)."""
    low, high = interval(a.draws - b.draws)
    return 10 ** (a.log_opt - b.log_opt), 10 ** low, 10 ** high


# ---- the learning-forgetting plane (claim 21) -----------------------------------------------------------------

def frontier(forgetting: np.ndarray, gains: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Full FT's frontier: the points no other beats on both axes (less forgetting, more gain), by forgetting."""
    from analysis.tables import pareto_mask

    forgetting, gains = np.asarray(forgetting, float), np.asarray(gains, float)
    on = pareto_mask(forgetting, gains)
    order = np.argsort(forgetting[on])
    return forgetting[on][order], gains[on][order]


def frontier_gain(front_x: np.ndarray, front_y: np.ndarray, x: float) -> float:
    """The frontier's gain at forgetting `x`: linear between its points, flat beyond its most-forgetting point,
    undefined (nan) below its least-forgetting one (nothing of full FT forgets that little)."""
    if front_x.size == 0 or not math.isfinite(x) or x < front_x[0]:
        return math.nan
    return float(np.interp(x, front_x, front_y))
