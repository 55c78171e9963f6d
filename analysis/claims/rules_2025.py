"""Claims 16-21: results from 2025-2026 (LoRA Without Regret; "Learning Rate Matters"; LoRA Learns Less and
Forgets Less; PEFT-Arena), each a rule a machine applies to the records, registered in the ledger beside claims
1-15 (analysis/claims/rules.py imports this module and analysis/claims/rules_2025_tradeoffs.py). This module: 16
(learning-rate ratio), 17 (tuned variants), 18 (capacity); 19-21 in rules_2025_tradeoffs.py.

They read `Evidence.records` (every run at every learning rate) and `Evidence.runs` (each variant at its
validation-selected rate). Statistics are in analysis/claims/stats_2025.py: a seeded bootstrap over seeds (to be
swapped for analysis/bootstrap.py's seeds x items intervals) and gain over the floor, gain = (method - floor) /
(full - floor), the floor being `floor_score` where records have it, else the untuned `base_score`.
Each rule's text states its source's setting, so a reader sees how this harness's scope differs.
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd

from analysis import bootstrap as boot
from analysis.claims import stats_2025 as st
from analysis.claims.rows_2025 import (ScoreDraws, combined, fmt_g, ok_runs, rows_trained, score_draws,
                                       selected_runs, validation_curves, finished_runs)
from analysis.claims.rules import INCONCLUSIVE, REFUTED, SUPPORTED, Evidence, Verdict, claim

RATIO_BAND = (5.0, 20.0)          # claim 16: "about 10x"
RANK_BAND = (0.5, 2.0)            # claim 16: optimum(smallest rank) / optimum(largest rank)
MAIN_ALPHA = 32                   # claim 16's main arm: alpha fixed (1/r scaling, LoRA Without Regret)
SPREAD_POINTS = 2.0               # claim 17: methods within 2 points of each other
NAMED_VARIANTS = ("lora", "dora", "pissa", "rslora")
MIN_VARIANTS = 6                  # claim 17: the four named and >= 2 more


# ---- 16 -------------------------------------------------------------------------------------------------------

def _fit(runs: pd.DataFrame, gen: np.random.Generator) -> tuple[st.Optimum | None, str]:
    """A variant's fitted optimum, or why it does not qualify (seeds, grid steps)."""
    c = st.curve(runs)
    if c.log_lr.size < 3 or len(c.seeds) < st.MIN_SEEDS:
        return None, f"{len(c.seeds)} seeds at every one of {c.log_lr.size} rates (need {st.MIN_SEEDS} at >= 3)"
    if c.max_step > st.MAX_STEP:
        return None, f"grid step {c.max_step:.2g}x (need factor 2 or finer)"
    drawn = validation_curves(runs, c)
    if drawn is None:
        return st.optimum(c, gen), ""
    return st.optimum(c, gen, resampled=drawn[0], how=drawn[1]), ""


def _largest_variant(runs: pd.DataFrame) -> pd.DataFrame:
    """The runs of the variant with the most runs: two sweeps' configs of one method (e.g. with and without a
    validation curve) are separate variants of one cell and are never pooled."""
    if runs.empty:
        return runs
    return runs[runs["variant"] == runs["variant"].value_counts().index[0]]


def _lora_arms(rows: pd.DataFrame) -> dict[str, pd.DataFrame]:
    alpha, r = rows["alpha"], rows["r"]
    return {f"alpha={MAIN_ALPHA}": rows[alpha == MAIN_ALPHA], "alpha=2r": rows[alpha == 2 * r]}


def _seeds_plan(what: str, ratio: tuple[float, float, float], n_seeds: int, band: tuple[float, float]) -> str:
    """A projection (an estimate, not a power analysis): the seeds at which the ratio's interval, narrowing as
    1/sqrt(seeds) around the same point, would clear the nearer edge of its band. Optimistic where the validation
    items' noise (which more seeds do not shrink) dominates."""
    point, low, high = (math.log10(x) for x in ratio)
    half = (high - low) / 2
    room = min(abs(point - math.log10(band[0])), abs(math.log10(band[1]) - point))
    if room < 1e-9:
        return f"{what}: {ratio[0]:.2g} sits on the band's edge {band}: no number of seeds decides it"
    need = math.ceil(n_seeds * (half / room) ** 2)
    return (f"{what}: {ratio[0]:.2g} [{ratio[1]:.2g}, {ratio[2]:.2g}] at {n_seeds} seeds; ~{need} seeds would put "
            f"it clear of {band} if it narrows as 1/sqrt(seeds) (projection)")


def _band(low: float, high: float, band: tuple[float, float]) -> str:
    """'in' when the interval lies inside the band, 'out' when wholly outside it, else 'open'."""
    if band[0] <= low and high <= band[1]:
        return "in"
    return "out" if high < band[0] or low > band[1] else "open"


@claim(16, "The optimal LoRA learning rate is about 10x full FT's (5-20x) and does not move with rank "
           "(alpha fixed, 1/r scaling).")
def claim_16(ev: Evidence, v: Verdict) -> Verdict:
    """Per cell with full FT and LoRA on a factor-2 (or finer) rate grid, >= 3 seeds at every rate: each variant's
    optimum is the vertex of a quadratic in log10(lr) through its best grid point and neighbours (mean validation
    score over seeds), bootstrapped over seeds and validation items jointly (2000 resamples, 95% percentile
    interval; seeds only for runs without per-item records: rows_2025.validation_curves). Main arm alpha = 32 at
    every rank: (a) at each rank the ratio LoRA / full FT optimum has its interval inside [5, 20]; (b) the ratio
    of optima smallest / largest rank has its interval inside [1/2, 2]. Supported when (a) holds at every rank and
    (b) in some cell; refuted when an interval lies wholly outside its band; otherwise inconclusive. The alpha = 2r
    arm is reported beside it. An optimum at a grid edge leaves its comparisons open. Sources: LoRA Without Regret
    (Thinking Machines 2025: Llama-3 / Qwen3 up to 70B, SFT and RL, ratio ~10x, Tinker's
    get_lora_lr_over_full_finetune_lr = 10.0); against: arXiv 2602.04998 (Gemma-3-1B: rank 4 needs 5.6x rank
    256's rate). Here: small encoders / a 135M causal LM, one task, 1 epoch."""
    records, gen = finished_runs(ev.records), st.rng()  # collapsed rates are points of the curve
    if records.empty:
        v.missing = "records at every rate (sweeps/study/lr-ratio.yaml, lr-ratio-alpha2r.yaml)"
        return v
    skipped, checks, rank_checks = [], [], []
    # a rate grid is a variant tried at >= 3 rates; the other sweeps' variants of a cell (one selected rate and
    # its seeds) are not curves and are not listed as skipped
    grids = records.groupby(["cell", "variant"])["lr"].transform("nunique") >= 3
    for cell, part in records[grids].groupby("cell", sort=False):
        fulls = part[part["method"] == "full"]
        lora = part[(part["method"] == "lora") & part["targets"].notna()]
        if fulls.empty or lora.empty:
            continue
        for budget, in_budget in lora.groupby("budget", sort=False):
            full_runs = _largest_variant(fulls[fulls["budget"] == budget])
            full, why = _fit(full_runs, gen) if not full_runs.empty else (None, "no full FT at this budget")
            if full is None:
                skipped.append(f"{cell} full FT: {why}")
                continue
            v.evidence.append(f"{cell} full FT optimum {fmt_g(full.lr)} {_interval_text(full.lr_interval())}"
                              + (" (grid edge)" if full.edge else "") + f"; optima resample {full.how}")
            for arm, arm_runs in _lora_arms(in_budget).items():
                fits = {}
                for _, runs in sorted(arm_runs.groupby("variant"), key=lambda kv: kv[1]["r"].iloc[0]):
                    r, targets = runs["r"].iloc[0], runs["targets"].iloc[0]
                    fit, why = _fit(runs, gen)
                    if fit is None:
                        skipped.append(f"{cell} lora r={int(r)} {arm}: {why}")
                        continue
                    fits[int(r)] = fit
                    ratio = st.ratio(fit, full)
                    state = "open" if fit.edge or full.edge else _band(ratio[1], ratio[2], RATIO_BAND)
                    if arm == f"alpha={MAIN_ALPHA}":
                        checks.append(state)
                        if state == "open" and not (fit.edge or full.edge):
                            v.plan.append(_seeds_plan(f"{cell} r={int(r)} / full FT", ratio, fit.n_seeds, RATIO_BAND))
                    v.evidence.append(f"{cell} lora r={int(r)} {targets} {arm}: optimum {fmt_g(fit.lr)} "
                                      f"{_interval_text(fit.lr_interval())}, / full FT {ratio[0]:.1f} "
                                      f"[{ratio[1]:.1f}, {ratio[2]:.1f}] ({state})" + (" (grid edge)" if fit.edge else ""))
                if len(fits) >= 2:
                    small, large = fits[min(fits)], fits[max(fits)]
                    rr = st.ratio(small, large)
                    state = "open" if small.edge or large.edge else _band(rr[1], rr[2], RANK_BAND)
                    if arm == f"alpha={MAIN_ALPHA}":
                        rank_checks.append(state)
                        if state == "open" and not (small.edge or large.edge):
                            v.plan.append(_seeds_plan(f"{cell} r={min(fits)} / r={max(fits)}", rr,
                                                      min(small.n_seeds, large.n_seeds), RANK_BAND))
                    v.evidence.append(f"{cell} {arm}: optimum r={min(fits)} / r={max(fits)} {rr[0]:.2f} "
                                      f"[{rr[1]:.2f}, {rr[2]:.2f}] ({state})")
    if not checks:
        v.missing = "full FT and LoRA (alpha=32) on a factor-2 rate grid with >= 3 seeds at every rate" + (
            "; skipped: " + "; ".join(skipped) if skipped else "")
        return v
    v.missing = "; ".join(skipped)
    v.estimate = (f"ratio in [5, 20] at {checks.count('in')} of {len(checks)} rank(s); rank invariance "
                  + (f"in [1/2, 2] in {rank_checks.count('in')} of {len(rank_checks)}" if rank_checks else "not tested"))
    if "out" in checks or "out" in rank_checks:
        v.verdict = REFUTED
    elif all(c == "in" for c in checks) and rank_checks and all(c == "in" for c in rank_checks):
        v.verdict = SUPPORTED
    else:
        v.verdict = INCONCLUSIVE
    return v


def _interval_text(bounds: tuple[float, float]) -> str:
    return f"[{fmt_g(bounds[0])}, {fmt_g(bounds[1])}]"

# ---- 17 -------------------------------------------------------------------------------------------------------

def _rate(ev: Evidence, selected: pd.DataFrame, gen: np.random.Generator) -> float:
    """A variant's fitted optimum where its records form a factor-2 grid with >= 3 seeds, else its selected rate."""
    records = ok_runs(ev.records)
    if not records.empty:
        mine = records[(records["cell"] == selected["cell"].iloc[0]) & (records["variant"] == selected["variant"].iloc[0])]
        fit, _ = _fit(mine, gen) if not mine.empty else (None, "")
        if fit is not None and not fit.edge:
            return fit.lr
    return float(selected["lr"].iloc[0])


@claim(17, "At tuned learning rates LoRA, DoRA, PiSSA, rsLoRA and other LoRA variants land within 2 points of "
           "each other.")
def claim_17(ev: Evidence, v: Verdict) -> Verdict:
    """Per cell, every PEFT variant at LoRA's rank and targets, each at its own validation-selected rate, >= 3
    seeds, at least the four named methods and two more: the spread (best minus worst mean test score, in points
    = 100 x the score) with a 95% interval from simultaneous intervals over every pair's difference (bootstrap
    max statistic, stats_2025.spread_interval) over the reported seeds and test items, the methods drawn together
    (analysis/claims/rows_2025.score_draws). Supported when the interval's upper end is <= 2
    points, refuted when its lower end is > 2, else inconclusive. Beside it: each method's gain retention against
    full FT and its selected (or, on a factor-2 grid, fitted) rate relative to LoRA's (the source: PiSSA ~10x
    lower, MiLoRA 3.2x lower). Source: arXiv 2602.04998 (Qwen3-0.6B and others, rank 128, 3 runs, best vs worst
    0.84 points, ten variants); here: an encoder and a 135M causal LM, rank 16."""
    runs, gen = selected_runs(ev), st.rng()
    verdicts, found, headline = [], False, []
    for cell, part in runs.groupby("cell", sort=False) if not runs.empty else []:
        lora = part[part["method"] == "lora"]
        for (r, targets), anchor in lora.groupby(["r", "targets"]):
            peers = part[(part["r"] == r) & (part["targets"] == targets) & (part["method"] != "full")]
            peers = pd.concat([_largest_variant(g) for _, g in peers.groupby("method")])  # one variant a method
            seeds = peers.groupby("method")["seed"].nunique()
            methods = sorted(seeds[seeds >= st.MIN_SEEDS].index)
            if not set(NAMED_VARIANTS) <= set(methods) or len(methods) < MIN_VARIANTS:
                continue
            found = True
            drawn = score_draws(ev, cell, {m: peers[peers["method"] == m] for m in methods})
            draws = 100 * np.vstack([drawn.draws[m] for m in methods])
            means = {m: 100 * drawn.point[m] for m in methods}
            spread = max(means.values()) - min(means.values())
            low, high = st.spread_interval(np.array([means[m] for m in methods]), draws)
            verdicts.append(SUPPORTED if high <= SPREAD_POINTS else REFUTED if low > SPREAD_POINTS else INCONCLUSIVE)
            if verdicts[-1] == INCONCLUSIVE:
                v.plan.append(_spread_plan(cell, means, drawn))
            v.evidence.append(f"{cell} r={int(r)} {targets}: spread {spread:.2f} points [{low:.2f}, {high:.2f}] over "
                              f"{len(methods)} methods ({drawn.how})")
            named = [methods.index(m) for m in NAMED_VARIANTS]
            n_low, n_high = st.spread_interval(np.array([means[m] for m in NAMED_VARIANTS]), draws[named])
            n_spread = max(means[m] for m in NAMED_VARIANTS) - min(means[m] for m in NAMED_VARIANTS)
            v.evidence.append(f"  beside the rule, the four named ({', '.join(NAMED_VARIANTS)}) alone: spread "
                              f"{n_spread:.2f} points [{n_low:.2f}, {n_high:.2f}]")
            headline.append(f"spread {spread:.2f} points [{low:.2f}, {high:.2f}] over {len(methods)} methods "
                            f"({n_spread:.2f} [{n_low:.2f}, {n_high:.2f}] over the four named)")
            full = part[part["method"] == "full"]
            floor = st.floor_of(part)
            rates = {m: _rate(ev, peers[peers["method"] == m], gen) for m in methods}
            for m in methods:
                ret = st.gain(means[m] / 100, floor, full["score"].mean()) if not full.empty else math.nan
                v.evidence.append(f"  {m}: {means[m]:.2f} points, gain retention {100 * float(ret):.1f}%, rate "
                                  f"{fmt_g(rates[m])} = {relative_rate(rates[m], rates['lora'])}")
    if not found:
        v.missing = (f"{MIN_VARIANTS}+ PEFT methods incl. {', '.join(NAMED_VARIANTS)} at one rank and targets, "
                     f"each at its selected rate with >= {st.MIN_SEEDS} seeds (sweeps/study/tuned-variants.yaml)")
        return v
    v.estimate = headline[0] if len(headline) == 1 else \
        f"{verdicts.count(SUPPORTED)} of {len(verdicts)} group(s) within {SPREAD_POINTS:g} points"
    v.verdict = combined(verdicts)
    return v


def _spread_plan(cell: str, means: dict[str, float], drawn: ScoreDraws) -> str:
    """What would put the widest pair's difference clear of the 2-point line: a projection for that pair alone
    (pointwise), so a lower bound on what the simultaneous interval over every pair needs."""
    best, worst = max(means, key=means.get), min(means, key=means.get)
    need = boot.power({"a": drawn.arms[best], "b": drawn.arms[worst]}, lambda a, b: 100 * (a - b), ("a", "b"),
                      abs(means[best] - means[worst] - SPREAD_POINTS))
    return (f"{cell} {best} - {worst} (the widest pair; the interval over all {len(means) * (len(means) - 1) // 2} "
            f"pairs needs more): {need.describe()}")


def relative_rate(rate: float, lora: float) -> str:
    """A method's selected rate against LoRA's, in words: "LoRA's", "2x lower than LoRA's", "16x higher ..."."""
    if not (rate > 0 and lora > 0):
        return "n/a"
    if math.isclose(rate, lora, rel_tol=1e-6):
        return "LoRA's"
    return f"{lora / rate:.2g}x lower than LoRA's" if rate < lora else f"{rate / lora:.2g}x higher than LoRA's"

# ---- 18 -------------------------------------------------------------------------------------------------------

def _crossing(gaps: list[tuple[int, float, float]]) -> int | None:
    """The smallest data size from which on LoRA stays below full FT beyond the interval (gap low end > 0)."""
    below = [low > 0 for _, low, _ in gaps]
    for i in range(len(gaps)):
        if all(below[i:]):
            return gaps[i][0]
    return None


@claim(18, "LoRA matches full FT until the training data exceeds its capacity; that data size grows with rank.")
def claim_18(ev: Evidence, v: Verdict) -> Verdict:
    """Random-label memorisation (task memorize: accuracy on the training rows, head frozen in every method), each
    variant at its selected rate, >= 3 seeds, per training-set size n: the gap full FT minus LoRA in accuracy with a
    bootstrap interval over the reported seeds and the memorised rows, paired (rows_2025.score_draws). At each rank,
    n*(r) = the smallest n from which on every gap's interval lies above 0. Supported when n*(r) exists at every
    rank (>= 2 ranks) and grows with rank (non-decreasing, larger at the largest rank than at the smallest); refuted
    when a higher rank falls below at a smaller n than a lower rank; otherwise inconclusive. Source: LoRA Without
    Regret (Thinking Machines 2025: SFT on Tulu3 / OpenThoughts, Llama-3 and Qwen3 models; LoRA falls behind once
    the data exceeds capacity); here a memorisation stand-in on a 22M encoder."""
    runs = selected_runs(ev)
    runs = runs[runs["task"] == "memorize"] if not runs.empty else runs
    if runs.empty or not (runs["method"] == "full").any():
        v.missing = "memorize runs of full FT and LoRA at several n_train (sweeps/study/capacity.yaml)"
        return v
    runs = runs.assign(n=rows_trained(runs))
    verdicts = []
    for model, part in runs.groupby("model", sort=False):
        full = part[part["method"] == "full"]
        crossings = {}
        for r, lora in part[part["method"] == "lora"].groupby("r"):
            gaps = []
            for n, mine in lora.groupby("n"):
                ref = full[full["n"] == n]
                if mine["seed"].nunique() < st.MIN_SEEDS or ref["seed"].nunique() < st.MIN_SEEDS:
                    continue
                drawn = score_draws(ev, str(mine["cell"].iloc[0]), {"full": ref, "lora": mine})
                low, high = st.interval(drawn.draws["full"] - drawn.draws["lora"])
                gaps.append((int(n), low, high))
                v.evidence.append(f"{model} lora r={int(r)} n={int(n)}: full FT - LoRA "
                                  f"{drawn.point['full'] - drawn.point['lora']:+.3f} [{low:+.3f}, {high:+.3f}] "
                                  f"({drawn.how})")
            if len(gaps) >= 2:
                crossings[int(r)] = _crossing(sorted(gaps))
        if len(crossings) < 2:
            continue
        ranks = sorted(crossings)
        v.evidence.append(f"{model}: n* by rank " + ", ".join(f"r={r}: {crossings[r] or 'none'}" for r in ranks))
        found = [crossings[r] for r in ranks if crossings[r] is not None]
        reversed_ = any(crossings[a] is not None and crossings[b] is not None and crossings[b] < crossings[a]
                        for i, a in enumerate(ranks) for b in ranks[i + 1:])
        grows = len(found) == len(ranks) and crossings[ranks[-1]] > crossings[ranks[0]] and not reversed_
        verdicts.append(REFUTED if reversed_ else SUPPORTED if grows else INCONCLUSIVE)
    if not verdicts:
        v.missing = f"memorize runs at >= 2 ranks and >= 2 sizes with >= {st.MIN_SEEDS} seeds beside full FT"
        return v
    v.estimate = f"{verdicts.count(SUPPORTED)} of {len(verdicts)} model(s) with a crossing growing with rank"
    v.verdict = combined(verdicts)
    return v
