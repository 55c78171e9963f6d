"""Claims 16-21: results from 2025-2026 (LoRA Without Regret; "Learning Rate Matters"; LoRA Learns Less and
Forgets Less; PEFT-Arena), each a rule a machine applies to the records, registered in the ledger beside claims
1-15 (analysis/claim_rules.py; analysis/claims.py imports this module).

They read `Evidence.records` (every run at every learning rate) and `Evidence.runs` (each variant at its
validation-selected rate). Statistics are in analysis/claim_stats_2025.py: a seeded bootstrap over seeds (to be
swapped for analysis/bootstrap.py's seeds x items intervals) and gain over the floor, gain = (method - floor) /
(full - floor), the floor being `floor_score` where records have it, else the untuned `base_score`.
Each rule's text states its source's setting, so a reader sees how this harness's scope differs.
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd

from analysis import claim_stats_2025 as st
from analysis.claim_rules import INCONCLUSIVE, REFUTED, SUPPORTED, Evidence, Verdict, claim, paired_rule

RATIO_BAND = (5.0, 20.0)          # claim 16: "about 10x"
RANK_BAND = (0.5, 2.0)            # claim 16: optimum(smallest rank) / optimum(largest rank)
MAIN_ALPHA = 32                   # claim 16's main arm: alpha fixed (1/r scaling, LoRA Without Regret)
SPREAD_POINTS = 2.0               # claim 17: methods within 2 points of each other
NAMED_VARIANTS = ("lora", "dora", "pissa", "rslora")
MIN_VARIANTS = 6                  # claim 17: the four named and >= 2 more
PARAM_MATCH = 0.05                # claim 19: trainable counts within 5%
LARGE_BATCH = 4                   # claim 20: a batch >= 4x the default
FRONTIER_MARGIN = 0.05            # claim 21: 5 gain points (gain as a share of full FT's)


COLUMNS = ("cell", "variant", "lr_variant", "task", "model", "method", "r", "alpha", "targets", "seed", "lr", "score",
           "val_score", "base_score", "forgetting", "params_trainable", "train_steps", "train_examples",
           "train_epochs", "budget", "label", "primary_metric")


def combined(states: list[str]) -> str:
    """A claim's verdict from its parts: refuted if any part is, supported if every part is, else inconclusive."""
    return REFUTED if REFUTED in states else SUPPORTED if all(x == SUPPORTED for x in states) else INCONCLUSIVE


def _ok(df: pd.DataFrame | None) -> pd.DataFrame:
    """The ok runs with a score, every column the rules read present (missing ones empty)."""
    if df is None or df.empty or "score" not in df:
        return pd.DataFrame(columns=list(COLUMNS))
    ok = df["status"].eq("ok") if "status" in df else True  # Evidence.runs holds ok runs only
    df = df[ok & df["score"].notna()]
    return df.reindex(columns=list(dict.fromkeys([*df.columns, *COLUMNS])))


def _batch(runs: pd.DataFrame) -> pd.Series:
    """Examples per optimizer step, from the record (train_examples = steps x batch x accumulation)."""
    return (runs["train_examples"] / runs["train_steps"]).round()


def _rows_trained(runs: pd.DataFrame) -> pd.Series:
    """Training rows (task.n_train as used), from examples / epochs; a `train_rows` column would replace this."""
    return (runs["train_examples"] / runs["train_epochs"]).round()


def _g(x: float, fmt: str = ".3g") -> str:
    return format(x, fmt) if math.isfinite(x) else "nan"


# ---- 16 -------------------------------------------------------------------------------------------------------

def _fit(runs: pd.DataFrame, gen: np.random.Generator) -> tuple[st.Optimum | None, str]:
    """A variant's fitted optimum, or why it does not qualify (seeds, grid steps)."""
    c = st.curve(runs)
    if c.log_lr.size < 3 or len(c.seeds) < st.MIN_SEEDS:
        return None, f"{len(c.seeds)} seeds at every one of {c.log_lr.size} rates (need {st.MIN_SEEDS} at >= 3)"
    if c.max_step > st.MAX_STEP:
        return None, f"grid step {c.max_step:.2g}x (need factor 2 or finer)"
    return st.optimum(c, gen), ""


def _largest_variant(runs: pd.DataFrame) -> pd.DataFrame:
    """The runs of the variant with the most runs: two sweeps' configs of one method (e.g. with and without a
    validation curve) are separate variants of one cell and are never pooled."""
    if runs.empty:
        return runs
    return runs[runs["variant"] == runs["variant"].value_counts().index[0]]


def _lora_arms(rows: pd.DataFrame) -> dict[str, pd.DataFrame]:
    alpha, r = rows["alpha"], rows["r"]
    return {f"alpha={MAIN_ALPHA}": rows[alpha == MAIN_ALPHA], "alpha=2r": rows[alpha == 2 * r]}


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
    score over seeds), bootstrapped over seeds (2000 resamples, 95% percentile interval). Main arm alpha = 32 at
    every rank: (a) at each rank the ratio LoRA / full FT optimum has its interval inside [5, 20]; (b) the ratio
    of optima smallest / largest rank has its interval inside [1/2, 2]. Supported when (a) holds at every rank and
    (b) in some cell; refuted when an interval lies wholly outside its band; otherwise inconclusive. The alpha = 2r
    arm is reported beside it. An optimum at a grid edge leaves its comparisons open. Sources: LoRA Without Regret
    (Thinking Machines 2025: Llama-3 / Qwen3 up to 70B, SFT and RL, ratio ~10x, Tinker's
    get_lora_lr_over_full_finetune_lr = 10.0); against: arXiv 2602.04998 (Gemma-3-1B: rank 4 needs 5.6x rank
    256's rate). Here: small encoders / a 135M causal LM, one task, 1 epoch."""
    records, gen = _ok(ev.records), st.rng()
    if records.empty:
        v.missing = "records at every rate (sweeps/study/lr-ratio.yaml)"
        return v
    skipped, checks, rank_checks = [], [], []
    for cell, part in records.groupby("cell", sort=False):
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
            v.evidence.append(f"{cell} full FT optimum {_g(full.lr)} {_interval_text(full.lr_interval())}"
                              + (" (grid edge)" if full.edge else ""))
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
                    v.evidence.append(f"{cell} lora r={int(r)} {targets} {arm}: optimum {_g(fit.lr)} "
                                      f"{_interval_text(fit.lr_interval())}, / full FT {ratio[0]:.1f} "
                                      f"[{ratio[1]:.1f}, {ratio[2]:.1f}] ({state})" + (" (grid edge)" if fit.edge else ""))
                if len(fits) >= 2:
                    small, large = fits[min(fits)], fits[max(fits)]
                    rr = st.ratio(small, large)
                    state = "open" if small.edge or large.edge else _band(rr[1], rr[2], RANK_BAND)
                    if arm == f"alpha={MAIN_ALPHA}":
                        rank_checks.append(state)
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
    return f"[{_g(bounds[0])}, {_g(bounds[1])}]"


# ---- 17 -------------------------------------------------------------------------------------------------------

def _selected(ev: Evidence) -> pd.DataFrame:
    return _ok(ev.runs)


def _rate(ev: Evidence, selected: pd.DataFrame, gen: np.random.Generator) -> float:
    """A variant's fitted optimum where its records form a factor-2 grid with >= 3 seeds, else its selected rate."""
    records = _ok(ev.records)
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
    = 100 x the score) with a bootstrap interval over seeds. Supported when the interval's upper end is <= 2
    points, refuted when its lower end is > 2, else inconclusive. Beside it: each method's gain retention against
    full FT and its selected (or, on a factor-2 grid, fitted) rate relative to LoRA's (the source: PiSSA ~10x
    lower, MiLoRA 3.2x lower). Source: arXiv 2602.04998 (Qwen3-0.6B and others, rank 128, 3 runs, best vs worst
    0.84 points, ten variants); here: an encoder and a 135M causal LM, rank 16."""
    runs, gen = _selected(ev), st.rng()
    verdicts, found = [], False
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
            draws = np.vstack([st.boot_means(100 * peers[peers["method"] == m]["score"], gen) for m in methods])
            means = {m: 100 * peers[peers["method"] == m]["score"].mean() for m in methods}
            spread = max(means.values()) - min(means.values())
            low, high = st.interval(draws.max(axis=0) - draws.min(axis=0))
            verdicts.append(SUPPORTED if high <= SPREAD_POINTS else REFUTED if low > SPREAD_POINTS else INCONCLUSIVE)
            v.evidence.append(f"{cell} r={int(r)} {targets}: spread {spread:.2f} points [{low:.2f}, {high:.2f}] over "
                              f"{len(methods)} methods")
            full = part[part["method"] == "full"]
            floor = st.floor_of(part)
            rates = {m: _rate(ev, peers[peers["method"] == m], gen) for m in methods}
            for m in methods:
                ret = st.gain(means[m] / 100, floor, full["score"].mean()) if not full.empty else math.nan
                v.evidence.append(f"  {m}: {means[m]:.2f} points, gain retention {100 * float(ret):.1f}%, rate "
                                  f"{_g(rates[m])} = {rates['lora'] / rates[m]:.2g}x lower than LoRA's")
    if not found:
        v.missing = (f"{MIN_VARIANTS}+ PEFT methods incl. {', '.join(NAMED_VARIANTS)} at one rank and targets, "
                     f"each at its selected rate with >= {st.MIN_SEEDS} seeds (sweeps/study/tuned-variants.yaml)")
        return v
    v.estimate = f"{verdicts.count(SUPPORTED)} of {len(verdicts)} group(s) within {SPREAD_POINTS:g} points"
    v.verdict = combined(verdicts)
    return v


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
    bootstrap interval over seeds. At each rank, n*(r) = the smallest n from which on every gap's interval lies
    above 0. Supported when n*(r) exists at every rank (>= 2 ranks) and grows with rank (non-decreasing, larger at
    the largest rank than at the smallest); refuted when a higher rank falls below at a smaller n than a lower
    rank; otherwise inconclusive. Source: LoRA Without Regret (Thinking Machines 2025: SFT on Tulu3 / OpenThoughts,
    Llama-3 and Qwen3 models; LoRA falls behind once the data exceeds capacity); here a memorisation stand-in on
    a 22M encoder."""
    runs, gen = _selected(ev), st.rng()
    runs = runs[runs["task"] == "memorize"] if not runs.empty else runs
    if runs.empty or not (runs["method"] == "full").any():
        v.missing = "memorize runs of full FT and LoRA at several n_train (sweeps/study/capacity.yaml)"
        return v
    runs = runs.assign(n=_rows_trained(runs))
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
                draws = st.boot_means(ref["score"], gen) - st.boot_means(mine["score"], gen)
                low, high = st.interval(draws)
                gaps.append((int(n), low, high))
                v.evidence.append(f"{model} lora r={int(r)} n={int(n)}: full FT - LoRA "
                                  f"{ref['score'].mean() - mine['score'].mean():+.3f} [{low:+.3f}, {high:+.3f}]")
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


# ---- 19 -------------------------------------------------------------------------------------------------------

@claim(19, "LoRA on the MLP, or on all linear layers, beats attention-only LoRA at matched trainable parameters.")
def claim_19(ev: Evidence, v: Verdict) -> Verdict:
    """Fair LoRA rows (each at its selected rate, >= 3 seeds) in one cell: MLP-only minus attention-only and
    all-linear minus attention-only test score, only where the measured trainable counts agree within 5%: supported
    when every difference is > 0 beyond its 95% Welch interval, refuted when one is < 0 beyond it, else
    inconclusive. Source: LoRA Without Regret (Llama-3 / Qwen3, matched parameters) and peft's method_comparison
    (Llama-3.2-3B, MLP 9.46M params 0.494 vs q,v 9.18M 0.478 on GSM8K, one seed); here minilm-l6 on classify."""
    fair, runs = ev.fair(), _selected(ev)
    if fair.empty or runs.empty:
        v.missing = "fair LoRA rows with targets attn, mlp and all-linear (sweeps/study/placement.yaml)"
        return v
    counts = runs.groupby(["cell", "variant"])["params_trainable"].mean()
    lora = fair[fair["method"] == "lora"]
    lora = lora.assign(params=[counts.get((c, x), math.nan) for c, x in zip(lora["cell"], lora["variant"])])
    pairs, unmatched = [], []
    for _, attn in lora[lora["targets"] == "attn"].iterrows():
        for _, other in lora[(lora["cell"] == attn["cell"]) & lora["targets"].isin(["mlp", "all-linear"])].iterrows():
            off = abs(other["params"] / attn["params"] - 1)
            if off <= PARAM_MATCH:
                pairs.append((other, attn))
            else:
                unmatched.append(f"{other['label']} vs {attn['label']} ({100 * off:.0f}% apart)")
    if not pairs:
        v.missing = "attn and mlp / all-linear LoRA rows with trainable counts within 5%" + (
            f" (not matched: {'; '.join(unmatched[:4])})" if unmatched else "")
        return v
    v = paired_rule(v, ev, pairs, consistent=True)
    v.evidence = [e + f" ({int(a['params']):,} vs {int(b['params']):,} params)" for e, (a, b) in zip(v.evidence, pairs)]
    return v


# ---- 20 -------------------------------------------------------------------------------------------------------

def _gain_draws(lora: pd.DataFrame, full: pd.DataFrame, gen: np.random.Generator) -> np.ndarray:
    floor = st.floor_of(pd.concat([lora, full]))
    return st.gain(st.boot_means(lora["score"], gen), floor, st.boot_means(full["score"], gen))


@claim(20, "LoRA's gap to full FT is larger at a large batch than at the default one, and rank does not close it.")
def claim_20(ev: Evidence, v: Verdict) -> Verdict:
    """Per cell, full FT and LoRA at each rank, each at its own selected rate with >= 3 seeds, at the default
    (smallest) batch and one >= 4x larger (the same epochs, so 4x fewer optimizer steps; the evidence names both):
    the retention gap = 100 - gain retention (gain = (score - floor) / (full - floor)), and delta = gap at the
    large batch minus gap at the default, bootstrapped over seeds. Supported when delta > 0 beyond its interval
    at every rank and delta(largest rank) - delta(smallest rank) is not < 0 beyond its interval; refuted when some
    delta < 0 beyond its interval or delta shrinks with rank beyond its interval; otherwise inconclusive. Source:
    LoRA Without Regret (Llama-3 on Tulu3 / OpenThoughts, batch 32 to 512; the gap grows with batch, independent
    of rank); here minilm-l6 on classify."""
    runs, gen = _selected(ev), st.rng()
    if runs.empty:
        v.missing = "full FT and LoRA at two batch sizes >= 4x apart (sweeps/study/batch.yaml)"
        return v
    runs = runs.assign(batch=_batch(runs), epochs=runs["train_epochs"].round(1))
    deltas: dict[tuple[str, int], np.ndarray] = {}
    for (cell, _), part in runs.groupby(["cell", "epochs"], sort=False):  # batches compared at equal data
        sizes = sorted(part["batch"].dropna().unique())
        if len(sizes) < 2 or sizes[-1] < LARGE_BATCH * sizes[0]:
            continue
        small, large = sizes[0], sizes[-1]
        full = {b: part[(part["method"] == "full") & (part["batch"] == b)] for b in (small, large)}
        if any(f["seed"].nunique() < st.MIN_SEEDS for f in full.values()):
            continue
        steps = {b: int(part[part["batch"] == b]["train_steps"].max()) for b in (small, large)}
        for r, lora in part[part["method"] == "lora"].groupby("r"):
            mine = {b: lora[lora["batch"] == b] for b in (small, large)}
            if any(m["seed"].nunique() < st.MIN_SEEDS for m in mine.values()):
                continue
            gaps = {b: 100 * (1 - _gain_draws(mine[b], full[b], gen)) for b in (small, large)}
            deltas[(cell, int(r))] = gaps[large] - gaps[small]
            low, high = st.interval(deltas[(cell, int(r))])
            v.evidence.append(f"{cell} lora r={int(r)}: gap {np.nanmedian(gaps[small]):.1f} at batch {int(small)} "
                              f"({steps[small]} steps), {np.nanmedian(gaps[large]):.1f} at batch {int(large)} "
                              f"({steps[large]} steps); delta {np.nanmedian(deltas[(cell, int(r))]):+.1f} "
                              f"[{low:+.1f}, {high:+.1f}] points")
    if not deltas:
        v.missing = f"full FT and LoRA at two batch sizes >= {LARGE_BATCH}x apart, >= {st.MIN_SEEDS} seeds each"
        return v
    bounds = {k: st.interval(d) for k, d in deltas.items()}
    shrinks, trend_ok = False, True
    for cell in {c for c, _ in deltas}:
        ranks = sorted(r for c, r in deltas if c == cell)
        if len(ranks) >= 2:
            low, high = st.interval(deltas[(cell, ranks[-1])] - deltas[(cell, ranks[0])])
            v.evidence.append(f"{cell}: delta r={ranks[-1]} - r={ranks[0]} {low:+.1f} to {high:+.1f} points")
            shrinks |= high < 0
            trend_ok &= high >= 0
    v.estimate = f"delta > 0 beyond the interval at {sum(lo > 0 for lo, _ in bounds.values())} of {len(bounds)} rank(s)"
    if shrinks or any(high < 0 for _, high in bounds.values()):
        v.verdict = REFUTED
    elif all(low > 0 for low, _ in bounds.values()) and trend_ok:
        v.verdict = SUPPORTED
    else:
        v.verdict = INCONCLUSIVE
    return v


# ---- 21 -------------------------------------------------------------------------------------------------------

def plane_points(ev: Evidence, cell: str, gen: np.random.Generator) -> pd.DataFrame:
    """One cell's learning-forgetting points: every full-FT (rate, budget) of the records, and every other variant
    at its selected rate; gain over the floor (share of full FT's at its selected rate) and forgetting increase,
    each with its bootstrap draws over seeds (`gain_draws`, `forgetting_draws`)."""
    records, selected = _ok(ev.records), _selected(ev)
    records, selected = records[records["cell"] == cell], selected[selected["cell"] == cell]
    ref = selected[selected["method"] == "full"]
    if ref.empty or records.empty:
        return pd.DataFrame()
    floor, ref_draws = st.floor_of(records), st.boot_means(ref["score"], gen)
    groups = [("full", key, g) for key, g in records[records["method"] == "full"].groupby("lr_variant")]
    groups += [(g["label"].iloc[0], key, g) for key, g in selected[selected["method"] != "full"].groupby("variant")]
    rows = []
    for label, key, g in groups:
        g = g[g["forgetting"].notna()]
        if g.empty:
            continue
        gains, forgets = st.gain(st.boot_means(g["score"], gen), floor, ref_draws), st.boot_means(g["forgetting"], gen)
        rows.append({"label": label, "key": key, "method": g["method"].iloc[0], "lr": float(g["lr"].iloc[0]),
                     "budget": g["budget"].iloc[0], "n_seeds": g["seed"].nunique(),
                     "gain": float(st.gain(g["score"].mean(), floor, ref["score"].mean())),
                     "gain_low": st.interval(gains)[0], "gain_high": st.interval(gains)[1],
                     "forgetting": float(g["forgetting"].mean()), "forgetting_low": st.interval(forgets)[0],
                     "forgetting_high": st.interval(forgets)[1], "gain_draws": gains, "forgetting_draws": forgets})
    return pd.DataFrame(rows)


def frontier_deficit(points: pd.DataFrame, lora: pd.Series) -> tuple[float, float, float]:
    """LoRA's gain minus full FT's frontier at LoRA's forgetting, with its bootstrap interval (nan: LoRA forgets
    less than every full-FT point, where the frontier is undefined)."""
    full = points[(points["method"] == "full") & (points["n_seeds"] >= st.MIN_SEEDS)]
    if full.empty:
        return math.nan, math.nan, math.nan
    front = st.frontier(full["forgetting"], full["gain"])
    point = lora["gain"] - st.frontier_gain(*front, lora["forgetting"])
    fx, fy = np.vstack(full["forgetting_draws"]), np.vstack(full["gain_draws"])
    draws = [lora["gain_draws"][k] - st.frontier_gain(*st.frontier(fx[:, k], fy[:, k]), lora["forgetting_draws"][k])
             for k in range(fx.shape[1])]
    return (float(point), *st.interval(np.asarray(draws)))


def cell_learned(ev: Evidence, cell: str) -> bool:
    """False when the gain table marks the cell `not learned` (analysis/gain.py); True when it has no verdict on it."""
    ret = ev.retention
    if ret is None or ret.empty or "learned" not in ret.columns:
        return True
    flags = ret.loc[ret["cell"] == cell, "learned"].dropna()
    return flags.empty or bool(flags.astype(bool).any())


@claim(21, "LoRA learns less and forgets less: a trade-off along full FT's learning-forgetting frontier, not below it.")
def claim_21(ev: Evidence, v: Verdict) -> Verdict:
    """Per cell with a forgetting probe: full FT's points over every rate and budget tried (gain over the floor as a
    share of full FT's at its selected rate; forgetting increase), their frontier (analysis.tables.pareto_mask:
    less forgetting and more gain win; linear between its points); each fair LoRA variant (>= 2 rates tried, >= 3
    seeds) at its selected rate against it: deficit = LoRA's gain minus the frontier's at LoRA's forgetting,
    bootstrapped over seeds (every point resampled; only points with >= 3 seeds are judged or make the frontier,
    the rest are listed). Supported when every deficit's interval lies above -0.05 (within 5 gain points of the
    frontier, or above it); refuted when one lies wholly below -0.05; otherwise inconclusive (also when LoRA
    forgets less than any full-FT point). Cells that are not learned (full FT does not clear the floor) are
    listed, not judged. Sources: Biderman et al. 2024 (arXiv 2405.09673: Llama-2-7B, code and
    math, LoRA r 16-256, one curve), PEFT-Arena (arXiv 2605.28819: Qwen2.5-7B, Llama-3.2-3B, learning-retention
    plane); here small models, forgetting = the harness probe (encoder similarity ranking, causal-LM loss on
    general English)."""
    runs, gen = _selected(ev), st.rng()
    if runs.empty or _ok(ev.records).empty:
        v.missing = "records with forgetting for full FT (several rates) and LoRA in one cell"
        return v
    states, fair = [], ev.fair()
    tuned = set(zip(fair["cell"], fair["variant"])) if not fair.empty else set()
    for cell in runs["cell"].unique():
        if not cell_learned(ev, cell):  # no gain over the floor to trade: no verdict may rest on it
            v.evidence.append(f"{cell}: not learned (full FT does not clear its floor), not judged")
            continue
        points = plane_points(ev, cell, gen)
        if points.empty or not (points["method"] == "full").any():
            continue
        fair_point = np.array([(cell, k) in tuned for k in points["key"]], bool)
        lora_points = points[(points["method"] == "lora").to_numpy() & fair_point]
        for _, lora in lora_points.iterrows():
            if lora["n_seeds"] < st.MIN_SEEDS:  # one seed's bootstrap has no width: shown, not judged
                v.evidence.append(f"{cell} {lora['label']}: n={lora['n_seeds']} seed(s), not judged")
                continue
            d, low, high = frontier_deficit(points, lora)
            states.append(INCONCLUSIVE if not math.isfinite(d) else SUPPORTED if low >= -FRONTIER_MARGIN
                          else REFUTED if high < -FRONTIER_MARGIN else INCONCLUSIVE)
            v.evidence.append(f"{cell} {lora['label']}: gain {lora['gain']:.2f} [{lora['gain_low']:.2f}, "
                              f"{lora['gain_high']:.2f}], forgetting {lora['forgetting']:+.3f}; vs frontier "
                              + (f"{d:+.2f} [{low:+.2f}, {high:+.2f}]" if math.isfinite(d)
                                 else "undefined (forgets less than any full-FT point)"))
        n_full = int(((points["method"] == "full") & (points["n_seeds"] >= st.MIN_SEEDS)).sum())
        v.evidence.append(f"{cell}: full FT frontier over {n_full} (rate, budget) point(s) "
                          f"with >= {st.MIN_SEEDS} seeds")
    if not states:
        v.missing = f"full FT (with forgetting) and LoRA at its selected rate in one cell, >= {st.MIN_SEEDS} seeds each"
        return v
    v.estimate = f"{states.count(SUPPORTED)} of {len(states)} LoRA point(s) on or above the frontier (5-point margin)"
    v.verdict = combined(states)
    return v
