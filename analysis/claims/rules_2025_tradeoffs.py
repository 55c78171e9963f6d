"""Claims 19-21 from 2025-2026 results: where LoRA goes (MLP / all-linear vs attention-only at matched parameters,
LoRA Without Regret), batch size (LoRA Without Regret) and learning vs forgetting (Biderman et al. 2024;
PEFT-Arena). Rules a machine applies to the records, registered in the ledger by analysis/claims/rules.py;
records read as in analysis/claims/rows_2025.py, statistics in analysis/claims/stats_2025.py."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd

from analysis.claims import stats_2025 as st
from analysis.claims.rows_2025 import batch_size, combined, ok_runs, score_draws, selected_runs, study_arm
from analysis.claims.rules import INCONCLUSIVE, REFUTED, SUPPORTED, Evidence, Verdict, claim, paired_rule

PARAM_MATCH = 0.05                # claim 19: trainable counts within 5%
LARGE_BATCH = 4                   # claim 20: a batch >= 4x the default
FRONTIER_MARGIN = 0.05            # claim 21: 5 gain points (gain as a share of full FT's)


# ---- 19 -------------------------------------------------------------------------------------------------------

@claim(19, "LoRA on the MLP, or on all linear layers, beats attention-only LoRA at matched trainable parameters.")
def claim_19(ev: Evidence, v: Verdict) -> Verdict:
    """Fair LoRA rows (each at its selected rate, >= 3 seeds) in one cell: MLP-only minus attention-only and
    all-linear minus attention-only test score, only where the measured trainable counts agree within 5%: supported
    when every difference is > 0 beyond its 95% interval (bootstrap over seeds and test items, paired), refuted
    when one is < 0 beyond it, else inconclusive. Source: LoRA Without Regret (Llama-3 / Qwen3, matched parameters) and peft's method_comparison
    (Llama-3.2-3B, MLP 9.46M params 0.494 vs q,v 9.18M 0.478 on GSM8K, one seed); here minilm-l6 on classify."""
    fair, runs = ev.fair(), selected_runs(ev)
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

def _batch_arms(part: pd.DataFrame, small: float, large: float) -> dict[str, pd.DataFrame]:
    """The runs of full FT and of LoRA at each rank, at the two batch sizes, named "full@<b>" and "r<r>@<b>"."""
    arms = {}
    for b in (small, large):
        at = part[part["batch"] == b]
        arms[f"full@{b:g}"] = at[at["method"] == "full"]
        for r, lora in at[at["method"] == "lora"].groupby("r"):
            arms[f"r{int(r)}@{b:g}"] = lora
    return {k: g for k, g in arms.items() if g["seed"].nunique() >= st.MIN_SEEDS}


@claim(20, "LoRA's gap to full FT is larger at a large batch than at the default one, and rank does not close it.")
def claim_20(ev: Evidence, v: Verdict) -> Verdict:
    """Per cell, full FT and LoRA at each rank, each at its own selected rate with >= 3 seeds, at the default
    (smallest) batch and one >= 4x larger (the same epochs, so 4x fewer optimizer steps; the evidence names both):
    the retention gap = 100 - gain retention (gain = (score - floor) / (full - floor)), and delta = gap at the
    large batch minus gap at the default. All arms of a cell and its floor are resampled together (reported
    seeds and test items, paired: analysis/claims/rows_2025.score_draws). Supported when delta > 0 beyond its
    95% interval at every rank and delta(largest rank) - delta(smallest rank) is not < 0 beyond its interval;
    refuted when some delta < 0 beyond its interval or delta shrinks with rank beyond its interval; otherwise
    inconclusive. Source: LoRA Without Regret (Llama-3 on Tulu3 / OpenThoughts, batch 32 to 512; the gap grows
    with batch, independent of rank); here minilm-l6 on classify."""
    runs = selected_runs(ev)
    if runs.empty:
        v.missing = "full FT and LoRA at two batch sizes >= 4x apart (sweeps/study/batch.yaml)"
        return v
    runs = runs.assign(batch=batch_size(runs), epochs=runs["train_epochs"].round(1))
    deltas: dict[tuple[str, int], np.ndarray] = {}
    points: dict[tuple[str, int], float] = {}
    scopes: list[str] = []
    for (cell, _), part in runs.groupby(["cell", "epochs"], sort=False):  # batches compared at equal data
        sizes = sorted(part["batch"].dropna().unique())
        if len(sizes) < 2 or sizes[-1] < LARGE_BATCH * sizes[0]:
            continue
        small, large = sizes[0], sizes[-1]
        groups = _batch_arms(part, small, large)
        ranks = [int(r) for r in sorted(part.loc[part["method"] == "lora", "r"].dropna().unique())
                 if f"r{int(r)}@{small:g}" in groups and f"r{int(r)}@{large:g}" in groups]
        if f"full@{small:g}" not in groups or f"full@{large:g}" not in groups or not ranks:
            continue
        drawn = score_draws(ev, cell, groups, floor=True)
        d = drawn.draws
        steps = {b: int(part[part["batch"] == b]["train_steps"].max()) for b in (small, large)}
        items = {len(a.ids) for a in drawn.arms.values() if a.ids and a.seeds}
        seeds = sorted({s for a in drawn.arms.values() for s in a.seeds})
        scopes.append(f"{part['task'].iloc[0]}/{part['model'].iloc[0]}: {float(part['train_epochs'].iloc[0]):g} "
                      f"epochs at batch {int(small)} ({steps[small]} steps) and {int(large)} ({steps[large]} steps); "
                      f"ranks {', '.join(str(r) for r in ranks)}; test items {', '.join(map(str, sorted(items))) or '?'};"
                      f" seeds {','.join(str(s) for s in seeds)}")
        def gap(of: dict, r: int, b: float) -> np.ndarray:  # 100 - gain retention of LoRA r at batch b
            return 100 * (1 - st.gain(of[f"r{r}@{b:g}"], of["floor"], of[f"full@{b:g}"]))
        for r in ranks:
            deltas[(cell, r)] = gap(d, r, large) - gap(d, r, small)
            points[(cell, r)] = float(gap(drawn.point, r, large) - gap(drawn.point, r, small))
            low, high = st.interval(deltas[(cell, r)])
            v.evidence.append(f"{cell} lora r={r}: gap {float(gap(drawn.point, r, small)):.1f} at batch {int(small)} "
                              f"({steps[small]} steps), {float(gap(drawn.point, r, large)):.1f} at batch "
                              f"{int(large)} ({steps[large]} steps); delta {points[(cell, r)]:+.1f} "
                              f"[{low:+.1f}, {high:+.1f}] points ({drawn.how})")
    if not deltas:
        v.missing = f"full FT and LoRA at two batch sizes >= {LARGE_BATCH}x apart, >= {st.MIN_SEEDS} seeds each"
        return v
    v.scope = "; ".join(scopes)
    bounds = {k: st.interval(d) for k, d in deltas.items()}
    shrinks, trend_ok = False, True
    for cell in {c for c, _ in deltas}:
        ranks = sorted(r for c, r in deltas if c == cell)
        if len(ranks) >= 2:
            low, high = st.interval(deltas[(cell, ranks[-1])] - deltas[(cell, ranks[0])])
            v.evidence.append(f"{cell}: delta r={ranks[-1]} - r={ranks[0]} {low:+.1f} to {high:+.1f} points")
            shrinks |= high < 0
            trend_ok &= high >= 0
    v.estimate = "; ".join(f"r={r}: delta {points[(c, r)]:+.1f} [{bounds[(c, r)][0]:+.1f}, {bounds[(c, r)][1]:+.1f}]"
                           for c, r in deltas) + " points of retention gap (large minus default batch)"
    if shrinks or any(high < 0 for _, high in bounds.values()):
        v.verdict = REFUTED
    elif all(low > 0 for low, _ in bounds.values()) and trend_ok:
        v.verdict = SUPPORTED
    else:
        v.verdict = INCONCLUSIVE
    return v


# ---- 21 -------------------------------------------------------------------------------------------------------

def _reported(ev: Evidence, cell: str, runs: pd.DataFrame) -> pd.DataFrame:
    """One variant's runs at its selected rate without the seed that selected the rate, as every other verdict
    reads them (the study's arm names the reported seeds); all of them without a study (the rule tests)."""
    arm = study_arm(ev, cell, runs)
    return runs[runs["seed"].isin(arm.seeds)] if arm is not None and arm.seeds else runs


def plane_points(ev: Evidence, cell: str, gen: np.random.Generator) -> pd.DataFrame:
    """One cell's learning-forgetting points: every full-FT (rate, budget) of the records, and every other variant
    at its selected rate (its reported seeds: `_reported`); gain over the floor (share of full FT's at its
    selected rate) and forgetting increase, each with its bootstrap draws over seeds (`gain_draws`,
    `forgetting_draws`)."""
    records, selected = ok_runs(ev.records), selected_runs(ev)
    records, selected = records[records["cell"] == cell], selected[selected["cell"] == cell]
    selected = pd.concat([_reported(ev, cell, g) for _, g in selected.groupby("variant")]) if len(selected) else selected
    ref = selected[selected["method"] == "full"]
    if ref.empty or records.empty:
        return pd.DataFrame()
    floor, ref_draws = st.floor_of(records), st.boot_means(ref["score"], gen)
    chosen = ref["lr_variant"].iloc[0]  # full FT's selected (rate, budget): where forgetting_excess compares
    groups = [("full", key, ref if key == chosen else g)
              for key, g in records[records["method"] == "full"].groupby("lr_variant")]
    groups += [(g["label"].iloc[0], key, g) for key, g in selected[selected["method"] != "full"].groupby("variant")]
    rows = []
    for label, key, g in groups:
        g = g[g["forgetting"].notna()]
        if g.empty:
            continue
        gains, forgets = st.gain(st.boot_means(g["score"], gen), floor, ref_draws), st.boot_means(g["forgetting"], gen)
        rows.append({"label": label, "key": key, "method": g["method"].iloc[0], "lr": float(g["lr"].iloc[0]),
                     "selected_full": label == "full" and key == chosen,
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


def forgetting_excess(points: pd.DataFrame, lora: pd.Series) -> tuple[float, float, float]:
    """LoRA's forgetting minus full FT's at full FT's selected rate, with its bootstrap interval (nan without that
    point). The claim's trade-off needs it below zero; above zero beyond its interval, LoRA forgets more than full
    FT and the frontier's flat extension past full FT's most-forgetting point must not read that as "on it"."""
    ref = points[points["selected_full"]]
    if ref.empty or ref["n_seeds"].iloc[0] < st.MIN_SEEDS:
        return math.nan, math.nan, math.nan
    draws = np.asarray(lora["forgetting_draws"]) - np.asarray(ref["forgetting_draws"].iloc[0])
    return (float(lora["forgetting"] - ref["forgetting"].iloc[0]), *st.interval(draws))


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
    share of full FT's at its selected rate; forgetting increase), their frontier (analysis.tables.pareto_mask: less
    forgetting and more gain win; linear between its points); each fair LoRA variant (>= 2 rates tried, >= 3 seeds)
    at its selected rate against it: deficit = LoRA's gain minus the frontier's at LoRA's forgetting, bootstrapped
    over seeds (every point resampled; a selected point over its reported seeds, the selection seed left out; only
    points with >= 3 seeds are judged or make the frontier, the rest are listed). Supported when every deficit's
    interval lies above -0.05 (within 5 gain points of the frontier, or above it); refuted when one lies wholly
    below -0.05, or when a LoRA variant forgets more than full FT at full FT's selected rate (the difference's
    interval above 0: no trade-off, whatever the gain); otherwise inconclusive (also when LoRA forgets less than any
    full-FT point). Cells that are not learned (full FT does not clear the floor) are listed, not judged. Sources:
    Biderman et al. 2024 (arXiv 2405.09673: Llama-2-7B, code and math, LoRA r 16-256, one curve), PEFT-Arena (arXiv
    2605.28819: Qwen2.5-7B, Llama-3.2-3B, learning-retention plane); here small models, forgetting = the harness
    probe (encoder similarity ranking, causal-LM loss on general English)."""
    runs, gen = selected_runs(ev), st.rng()
    if runs.empty or ok_runs(ev.records).empty:
        v.missing = "records with forgetting for full FT (several rates) and LoRA in one cell"
        return v
    states, fair, forgets_more = [], ev.fair(), 0
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
            more, more_low, more_high = forgetting_excess(points, lora)
            if math.isfinite(more_low) and more_low > 0:  # the trade-off the claim names is absent: refuted here
                states.append(REFUTED)
                forgets_more += 1
                v.evidence.append(f"{cell} {lora['label']}: gain {lora['gain']:.2f} [{lora['gain_low']:.2f}, "
                                  f"{lora['gain_high']:.2f}], forgets more than full FT at its selected rate: "
                                  f"{more:+.3f} [{more_low:+.3f}, {more_high:+.3f}]")
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
    v.estimate = (f"{states.count(SUPPORTED)} of {len(states)} LoRA point(s) on or above the frontier (5-point "
                  f"margin); {forgets_more} forget(s) more than full FT at its selected rate")
    v.verdict = combined(states)
    return v
