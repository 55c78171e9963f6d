"""Intervals for the claims ledger: a hierarchical bootstrap over seeds and test items, paired across methods.

A cell's evidence is a set of *arms* (a tuned variant, full FT, the floor), each with its per-seed corpus score
and, where the run wrote `items.jsonl.gz` (harness/items.py), every test item's sufficient statistics. One
resample draws seeds (with replacement, the same seed indices for every arm that ran the same seeds: paired),
then test items (one multinomial draw of the items, the same for every arm and seed: the test set is shared),
recomputes each arm's corpus metric per seed from the summed stats through `harness.items.aggregate`, and
averages over the drawn seeds. Ratios (gain retention) and differences are computed per resample; intervals
are percentiles. Without per-item records the items stay fixed: a seeds-only bootstrap whose spread is scaled by a
t quantile (`estimate`), and the interval says so.

Coverage (`coverage`, tests/test_verdicts.py): resampling both levels counts the seed x item interaction twice,
so where item noise dominates the interval is slightly conservative (about 96% at 5 seeds); where seed noise
dominates, the plug-in variance of few seeds ((S - 1) / S of the truth) and the normal-like percentiles
under-cover at 3 seeds (`under_coverage`).

Also here, for the intruder claims: `count_interval` (a mean count, never below zero) and `rank_correlation`
(Spearman's rho with an exact permutation p-value when n! is small).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np
from scipy import stats

from harness.items import AGGREGATORS, aggregate

N_BOOT = 2000          # resamples per interval
BOOT_SEED = 39         # the generator's seed: every interval is reproducible
CONFIDENCE = 0.95
SEEDS_AND_ITEMS = "seeds and items"
SEEDS_ONLY = "seeds only (no per-item records)"
ITEM_SD = 2.5  # synthetic items' logit spread: most items right (or wrong) for every seed, as fine-tuned seeds are
EXACT_PERMUTATIONS = 40_320  # 8!: rank correlations over at most 8 points get the exact permutation p-value


@dataclass
class Arm:
    """One method's (or floor's) test evidence in a cell. A floor is one deterministic score: `seeds` empty."""

    metric: str
    seeds: tuple[int, ...]
    scores: np.ndarray                       # (S,) corpus score per seed; (1,) for a floor
    ids: tuple[str, ...] | None = None       # test item ids (shared order with `stats`)
    stats: np.ndarray | None = None          # (S, I, K) per-seed per-item sufficient statistics


@dataclass
class Resamples:
    """Each arm's mean score per resample (`draws[name]`, shape (B,)), its observed value and how it was drawn."""

    draws: dict[str, np.ndarray]
    point: dict[str, float]
    how: str
    paired: bool
    n_items: int | None
    n_seeds: dict[str, int] = field(default_factory=dict)


def corpus(metric: str, sums: np.ndarray) -> np.ndarray:
    """`harness.items.aggregate` over the last axis of `sums` (column sums of stats), vectorised for mean metrics."""
    if metric not in AGGREGATORS:  # a mean of per-item scores: stats [score, 1]; aggregate's own rule, vectorised
        with np.errstate(invalid="ignore", divide="ignore"):
            return sums[..., 0] / sums[..., 1]
    return np.apply_along_axis(lambda s: aggregate(metric, s), -1, sums)


def _aligned(arms: dict[str, Arm]) -> dict[str, Arm] | None:
    """The arms restricted to the test items every one of them scored (same order); None without item records."""
    if any(a.stats is None or a.ids is None for a in arms.values()):
        return None
    common = sorted(set.intersection(*(set(a.ids) for a in arms.values())))
    if len(common) < 2:
        return None
    out = {}
    for name, a in arms.items():
        where = {i: k for k, i in enumerate(a.ids)}
        take = np.array([where[i] for i in common])
        stats_ = a.stats[:, take, :]
        out[name] = Arm(a.metric, a.seeds, corpus(a.metric, stats_.sum(axis=1)), tuple(common), stats_)
    return out


def _seed_draws(arms: dict[str, Arm], n_boot: int, rng: np.random.Generator) -> tuple[dict[str, np.ndarray], bool]:
    """Seed indices per resample and arm (B, S); the same indices for arms that ran the same seeds (paired)."""
    seeded = {n: a for n, a in arms.items() if a.seeds}
    sets = {tuple(sorted(a.seeds)) for a in seeded.values()}
    paired = len(sets) == 1 and len(next(iter(sets))) >= 2
    draws: dict[str, np.ndarray] = {}
    shared = rng.integers(0, len(next(iter(sets))), (n_boot, len(next(iter(sets))))) if paired else None
    for name, a in arms.items():
        if not a.seeds:
            draws[name] = np.zeros((n_boot, 1), dtype=int)
        elif paired:
            order = np.argsort(a.seeds)  # arm's own seed order -> the sorted common order
            draws[name] = order[shared]
        else:
            draws[name] = rng.integers(0, len(a.seeds), (n_boot, len(a.seeds)))
    return draws, paired


def resample(arms: dict[str, Arm], n_boot: int = N_BOOT, seed: int = BOOT_SEED,
             levels: Sequence[str] = ("seeds", "items")) -> Resamples:
    """B resamples of every arm's mean score (see the module docstring). `levels` drops a level (power analysis:
    ("seeds",) keeps the items fixed, ("items",) the seeds)."""
    rng = np.random.default_rng(seed)
    aligned = _aligned(arms)
    use = aligned if aligned is not None else arms
    draws, paired = _seed_draws(use, n_boot, rng)
    n_items = len(next(iter(aligned.values())).ids) if aligned is not None else None
    weights = None
    if aligned is not None and "items" in levels:
        weights = rng.multinomial(n_items, np.full(n_items, 1 / n_items), size=n_boot).astype(float)
    out, point = {}, {}
    for name, a in use.items():
        if weights is not None:
            per_seed = corpus(a.metric, np.einsum("bi,sik->bsk", weights, a.stats))     # (B, S)
        else:
            per_seed = np.broadcast_to(a.scores.astype(float), (n_boot, len(a.scores)))
        point[name] = float(np.mean(a.scores))
        if "seeds" in levels and a.seeds and len(a.seeds) >= 2:
            out[name] = np.take_along_axis(per_seed, draws[name], axis=1).mean(axis=1)
        else:
            out[name] = per_seed.mean(axis=1)
    how = SEEDS_AND_ITEMS if aligned is not None else SEEDS_ONLY
    return Resamples(out, point, how + (", paired" if paired else ""), paired, n_items,
                     {n: len(a.seeds) for n, a in use.items()})


def percentile(samples: np.ndarray, confidence: float = CONFIDENCE) -> tuple[float, float]:
    """The percentile interval of bootstrap samples (non-finite samples ignored; too few: nan)."""
    x = np.asarray(samples, float)
    x = x[np.isfinite(x)]
    if x.size < 10:
        return math.nan, math.nan
    tail = 100 * (1 - confidence) / 2
    low, high = np.percentile(x, [tail, 100 - tail])
    return float(low), float(high)


def gain_ratio(m: np.ndarray | float, full: np.ndarray | float, floor: np.ndarray | float) -> np.ndarray:
    """(method - floor) / (full - floor): the share of full FT's gain over the floor that the method keeps."""
    with np.errstate(invalid="ignore", divide="ignore"):
        return (np.asarray(m, float) - floor) / (np.asarray(full, float) - floor)


def estimate(res: Resamples, fn: Callable[..., np.ndarray], *names: str,
             confidence: float = CONFIDENCE) -> tuple[float, float, float]:
    """(point, low, high) of fn(arm means...) computed per resample. With per-item records: the percentile
    interval. Seeds only: point +- t(S - 1) * sqrt(S / (S - 1)) * the resamples' SD, S the fewest seeds of the
    arms involved (a handful of seeds has too few distinct resamples for percentiles; at S = 2 this is the
    Student-t interval). No seed variation and no items: no interval."""
    point = float(fn(*(res.point[n] for n in names)))
    samples = fn(*(res.draws[n] for n in names))
    if res.n_items:
        return (point, *percentile(samples, confidence))
    seeds = [res.n_seeds.get(n, 0) for n in names if res.n_seeds.get(n, 0) > 0]
    if not seeds or min(seeds) < 2:
        return point, math.nan, math.nan
    s = min(seeds)
    x = np.asarray(samples, float)
    x = x[np.isfinite(x)]  # a ratio whose denominator hit zero in a resample
    if x.size < 2:
        return point, math.nan, math.nan
    half = float(stats.t.ppf(0.5 + confidence / 2, s - 1) * math.sqrt(s / (s - 1)) * x.std())
    return point, point - half, point + half


# ---- power --------------------------------------------------------------------------------------------------

def _var(samples: np.ndarray) -> float:
    x = np.asarray(samples, float)
    x = x[np.isfinite(x)]
    return float(x.var()) if x.size >= 2 else math.nan


@dataclass
class Power:
    """Per-seed and per-item variance of a quantity (estimated from the pilot) and what would decide it."""

    seed_var: float
    item_var: float | None          # None: no per-item records
    n_seeds: int
    n_items: int | None
    need_seeds: int | None = None
    need_items: int | None = None

    def describe(self) -> str:
        if self.need_seeds is None:
            return "not decidable within 64 seeds x 16 times the items (the estimate sits on the line)"
        items = f" x {self.need_items} test items" if self.need_items else " (items fixed: no per-item records)"
        return f"needs {self.need_seeds} reported seeds{items} (now {self.n_seeds}" + (
            f" x {self.n_items} items" if self.n_items else "") + f"): add {self.need_seeds - self.n_seeds} seeds at the selected rate to each arm"


def power(arms: dict[str, Arm], fn: Callable[..., np.ndarray], names: Sequence[str], distance: float,
          n_boot: int = 400, z: float = 1.96) -> Power:
    """Variance components of fn(arms) from the pilot (seeds-only and items-only resamples, scaled to one seed and
    one item) and the fewest seeds above the pilot's (then items) whose interval half-width q * sqrt(vs / S + vi /
    I) is below `distance` (how far the estimate is from the line it must clear); q is z with per-item records,
    t(S - 1) for a seeds-only interval. A projection from the pilot's variance, not a guarantee."""
    seeds_only = resample(arms, n_boot, levels=("seeds",))
    n_seeds = max([len(a.seeds) for a in arms.values()] + [1])
    vs = _var(fn(*(seeds_only.draws[n] for n in names))) * n_seeds
    vi, n_items = None, seeds_only.n_items
    if n_items:
        items_only = resample(arms, n_boot, levels=("items",))
        vi = _var(fn(*(items_only.draws[n] for n in names))) * n_items
    out = Power(vs, vi, n_seeds, n_items)
    if not (distance > 0) or not math.isfinite(vs):
        return out
    unbiased = vs * n_seeds / (n_seeds - 1) if n_seeds >= 2 else vs
    items_grid = [n_items * k for k in (1, 2, 4, 8, 16)] if n_items else [None]
    for items in items_grid:
        item_term = (vi or 0.0) / items if items else 0.0
        for s in range(n_seeds + 1, 65):  # the pilot did not decide it: at least one more seed
            q = z if items else float(stats.t.ppf(0.975, s - 1))  # seeds only: the t-scaled interval of `estimate`
            if q * math.sqrt(unbiased / s + item_term) < distance:
                out.need_seeds, out.need_items = s, items
                return out
    return out


# ---- counts and rank correlations (the intruder claims) ---------------------------------------------------------

def count_interval(counts: Sequence[float], n_boot: int = N_BOOT, seed: int = BOOT_SEED) -> tuple[float, float, float]:
    """(mean, low, high) of a mean count over seeds: a percentile bootstrap of the mean, which stays within the
    observed counts and so never below zero. All counts zero: [0, the one-sided 95% Poisson upper bound / n]."""
    x = np.asarray(counts, float)
    if x.size == 0:
        return math.nan, math.nan, math.nan
    if not x.any():
        return 0.0, 0.0, float(stats.chi2.ppf(CONFIDENCE, 2) / 2 / x.size)  # Poisson: -ln(0.05) per run
    rng = np.random.default_rng(seed)
    means = x[rng.integers(0, x.size, (n_boot, x.size))].mean(axis=1)
    low, high = percentile(means)
    return float(x.mean()), max(0.0, low), high


def rank_correlation(x: Sequence[float], y: Sequence[float], seed: int = BOOT_SEED) -> tuple[float, float]:
    """(Spearman's rho, two-sided permutation p-value): exact over every pairing when n! <= 8!, else 9,999
    random permutations (seeded)."""
    x, y = np.asarray(x, float), np.asarray(y, float)
    if x.size < 3 or np.ptp(x) == 0 or np.ptp(y) == 0:
        return math.nan, math.nan
    rho = lambda a: stats.spearmanr(a, y).statistic  # noqa: E731
    exact = math.factorial(x.size) <= EXACT_PERMUTATIONS
    res = stats.permutation_test((x,), rho, permutation_type="pairings", alternative="two-sided",
                                 n_resamples=math.inf if exact else 9999, random_state=seed)
    return float(res.statistic), float(res.pvalue)


# ---- synthetic check: interval coverage where the truth is known ------------------------------------------------

def synthetic_arms(rng: np.random.Generator, n_seeds: int, n_items: int = 200, seed_sd: float = 0.02,
                   item_sd: float = ITEM_SD, truth: float = 0.8) -> dict[str, Arm]:
    """One synthetic accuracy study of one method: item difficulty fixed per item (the test set is a draw from an
    item population whose mean accuracy is `truth`), a per-seed shift on the logit scale, Bernoulli outcomes."""
    logit = math.log(truth / (1 - truth))
    difficulty = rng.normal(0.0, item_sd, n_items)
    shift = rng.normal(0.0, seed_sd / (truth * (1 - truth)), (n_seeds, 1))
    p = 1 / (1 + np.exp(-(logit + difficulty + shift)))
    hits = (rng.random((n_seeds, n_items)) < p).astype(float)
    stats_ = np.stack([hits, np.ones_like(hits)], axis=-1)
    return {"m": Arm("accuracy", tuple(range(n_seeds)), hits.mean(axis=1), tuple(map(str, range(n_items))), stats_)}


def population_mean(truth: float = 0.8, item_sd: float = ITEM_SD, seed_sd: float = 0.02, n: int = 2_000_000,
                    seed: int = 0) -> float:
    """The estimand of `synthetic_arms`: the accuracy averaged over the item and seed populations (Monte Carlo)."""
    rng = np.random.default_rng(seed)
    logit = math.log(truth / (1 - truth))
    return float(np.mean(1 / (1 + np.exp(-(logit + rng.normal(0, item_sd, n) + rng.normal(0, seed_sd / (truth * (1 - truth)), n))))))


def coverage(n_seeds: int, replications: int = 500, n_boot: int = 400, seed: int = 0, **kw: float) -> float:
    """The share of `replications` synthetic studies whose 95% interval for the mean holds the true mean."""
    rng = np.random.default_rng(seed)
    truth = population_mean(**{k: v for k, v in kw.items() if k != "n_items"})
    hits = 0
    for k in range(replications):
        res = resample(synthetic_arms(rng, n_seeds, **kw), n_boot, seed=k)
        low, high = percentile(res.draws["m"])
        hits += low <= truth <= high
    return hits / replications


def under_coverage(n_seeds: int = 3, replications: int = 500, n_boot: int = 400) -> dict[str, float]:
    """How far below 95% the interval falls at `n_seeds` where seed noise dominates (a seed spread of 0.06 on
    2,000 items) and where item noise does (0.02 on 200 items): {regime: coverage}."""
    return {"seed noise dominates": coverage(n_seeds, replications, n_boot, seed_sd=0.06, n_items=2000),
            "item noise dominates": coverage(n_seeds, replications, n_boot, seed_sd=0.02, n_items=200)}
