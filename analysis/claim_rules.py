"""The claims' decision rules: each commonly repeated claim about PEFT vs full fine-tuning, the rule a machine
applies to the measured evidence (its function's docstring), and the verdict. `analysis/claims.py` gathers the
evidence from the records and writes the ledger; analysis/verdicts.py holds the labels, the evidence and the shared
rules (threshold, claimed range, paired difference, scope, power).

Evidence (`Evidence`):
- *Score claims* use the gain-retention table (analysis/gain.py) over every run folder: each variant at its
  validation-selected learning rate, its test mean over the *reported* seeds (the seed that ran the learning-rate
  search is left out when two or more others ran at the selected rate: analysis/choices.py), raw retention
  (method / full FT) and gain retention ((method - floor) / (full FT - floor), the floor being the best trivial
  baseline on validation: the untuned model, copying the input, ...). Verdicts are decided on gain retention, with
  intervals from a hierarchical bootstrap over seeds and test items, paired across methods (analysis/bootstrap.py;
  seeds only where the records have no per-item scores, as the rows say). Only *fair* rows count: at least
  `MIN_SEEDS` seeds run and at least two learning rates tried; a cell whose full FT does not clear its floor
  (the 95% lower bound of full FT minus floor above `analysis.gain.MARGIN`) is *not learned* and decides nothing.
  Where a claim picks the best variant of a cell, it is the best on *validation* gain retention.
  A difference between two variants of one cell is a paired bootstrap interval on their reported seeds.
- *Intruder claims* use `intruder_groups.csv`, `intruder_summary.csv` and `intruder_correlations.json` written by
  `analysis.intruder`.
- *Cost claims* use the estimator (harness/estimate/; labelled estimated) and the measured records.
- *Latency and merging claims* use `serve_bench.json` and `merge_table.json` files.

Every verdict carries its scope (base models, tasks, budgets, test items, seeds): a refutation is a refutation at
this scale. An inconclusive verdict lists the seeds and items that would decide it (`python -m analysis.claims
--plan`).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import pandas as pd

from analysis.choices import best_by_validation
from analysis.verdicts import (ABOVE_RANGE, INCONCLUSIVE, LABELS, MIN_SEEDS, NOT_LEARNED, NOT_RUN, REFUTED, SHOWN,
                               SUPPORTED, Evidence, Verdict, fmt_gain, pairs_of, paired_rule, plan_gain, range_rule,
                               scope, threshold_rule, usable)

__all__ = ["ABOVE_RANGE", "CLAIMS", "INCONCLUSIVE", "LABELS", "MIN_SEEDS", "NOT_LEARNED", "NOT_RUN", "REFUTED",
           "SHOWN", "SUPPORTED", "Evidence", "Verdict", "ledger"]

NARROW_TASKS = ("instruct", "style", "extract", "classify")

CLAIMS: list[tuple[int, str, Callable[[Evidence], Verdict]]] = []


def claim(number: int, text: str):
    def register(fn: Callable[[Evidence, Verdict], Verdict]):
        def run(ev: Evidence) -> Verdict:
            return fn(ev, Verdict(number, text, NOT_RUN, rule=" ".join((fn.__doc__ or "").split())))
        CLAIMS.append((number, text, run))
        return run
    return register


def _ret(row: pd.Series) -> str:
    return fmt_gain(row)


def compare(ev: Evidence, v: Verdict, a: Callable[[pd.Series], bool], b: Callable[[pd.Series], bool],
            key: Callable[[pd.Series], Any], *, missing: str, consistent: bool) -> Verdict:
    """`paired_rule` over every (a, b) pair of fair rows in one cell with the same `key`; not run without one."""
    pairs = pairs_of(ev.fair(), a, b, key)
    if not pairs:
        v.missing = missing
        return v
    return paired_rule(v, ev, pairs, consistent=consistent)


def _peft(rows: pd.DataFrame) -> pd.DataFrame:
    return rows[rows["method"] != "full"]


# ---- the claims ---------------------------------------------------------------------------------------------

@claim(1, "PEFT recovers 90-95% of full fine-tuning quality on most tasks.")
def claim_1(ev: Evidence, v: Verdict) -> Verdict:
    """Per task (and model) the PEFT variant with the best validation gain retention over its cells (fair rows;
    two budgets of one task are one task); a range claim on gain retention: supported when the interval lies
    within 90-95% for a majority of the learned tasks (at least two tasks with rows), above the claimed range when
    a majority lies above 95%, refuted when a majority lies below 90%, else inconclusive."""
    best = best_by_validation(_peft(ev.fair()), ["task", "model"])
    if len(best) < 2:
        v.missing = f"fair retention rows on at least 2 tasks (have {len(best)})"
        return v
    return range_rule(v, ev, best, 90.0, 95.0, every=False)


@claim(2, "For instruction following, style, output format and narrow classification or extraction, well-tuned "
          "LoRA is essentially indistinguishable from a full fine-tune.")
def claim_2(ev: Evidence, v: Verdict) -> Verdict:
    """LoRA variants (any rank, targets) on the tasks instruct, style, extract, classify: per cell the LoRA
    variant with the best validation gain retention; supported when gain retention's lower bound is >= 95% in
    every learned cell, refuted when an upper bound is < 95%."""
    fair = ev.fair()
    best = best_by_validation(fair[(fair["method"] == "lora") & fair["task"].isin(NARROW_TASKS)], "cell")
    missing = [t for t in NARROW_TASKS if t not in set(best["task"])]
    v = threshold_rule(v, ev, best, 95.0)
    if missing:
        v.missing = "fair LoRA rows for " + ", ".join(missing)
    return v


@claim(3, "Full fine-tuning holds a meaningful edge for injecting new knowledge.")
def claim_3(ev: Evidence, v: Verdict) -> Verdict:
    """On the knowledge task, per cell the PEFT variant with the best validation gain retention: supported when
    its gain retention's upper bound is < 95% in every learned cell (full FT better by more than 5% of its gain),
    refuted when a lower bound is >= 95%, else inconclusive."""
    fair = _peft(ev.fair())
    best = best_by_validation(fair[fair["task"] == "knowledge"], "cell")
    if best.empty or best["gain_mean"].isna().all():
        v.missing = "a fair knowledge sweep (full FT and PEFT variants, lr_search, 3 seeds, a converged budget)"
        return v
    live = usable(v, ev, best)
    if live.empty:
        return v
    v.evidence = [_ret(r) for _, r in live.iterrows()] + v.evidence
    v.estimate = f"best PEFT gain retention {live['gain_mean'].max():.1f}%"
    edge, none = live["gain_high"] < 95, live["gain_low"] >= 95
    v.verdict = SUPPORTED if edge.all() else REFUTED if none.any() else INCONCLUSIVE
    v.scope = scope(live)
    if v.verdict == INCONCLUSIVE:
        v.plan += [plan_gain(ev, r, [95.0]) for _, r in live[~edge & ~none].iterrows()]
    return v


@claim(4, "QLoRA recovers 80-90% of full fine-tuning quality.")
def claim_4(ev: Evidence, v: Verdict) -> Verdict:
    """QLoRA rows, a range claim on gain retention: supported when the interval lies within 80-90% in every
    learned cell, above the claimed range when every lower bound is above 90%, refuted when an upper bound is
    below 80%, else inconclusive."""
    fair = ev.fair()
    rows = fair[fair["method"] == "qlora"]
    if rows.empty:
        v.missing = "fair QLoRA rows"
        return v
    return range_rule(v, ev, rows, 80.0, 90.0)


@claim(5, "DoRA consistently outperforms LoRA at the same rank.")
def claim_5(ev: Evidence, v: Verdict) -> Verdict:
    """DoRA minus LoRA test score in each learned cell with both at the same rank and targets, paired on seeds
    and items: supported when every difference is > 0 beyond its 95% interval, refuted when one is < 0 beyond
    it, else inconclusive."""
    return compare(ev, v, lambda x: x["method"] == "dora", lambda y: y["method"] == "lora",
                   lambda x: (x["r"], x["targets"]), missing="fair DoRA and LoRA rows at the same rank and targets",
                   consistent=True)


@claim(6, "rsLoRA trains stably at higher ranks and recovers quality there, where plain LoRA (alpha = 2r) does not.")
def claim_6(ev: Evidence, v: Verdict) -> Verdict:
    """rsLoRA minus LoRA test score at rank >= 64, same learned cell and targets, paired: supported when some
    difference is > 0 beyond its interval and none < 0; refuted when one is < 0 beyond it or none is > 0 with
    every interval excluding a gain; otherwise inconclusive."""
    return compare(ev, v, lambda x: x["method"] == "rslora" and (x["r"] or 0) >= 64, lambda y: y["method"] == "lora",
                   lambda x: (x["r"], x["targets"]),
                   missing="fair rsLoRA and LoRA rows at rank >= 64 (same cell and targets)", consistent=False)


@claim(7, "Higher rank adds capacity; r=16 is a reliable start; r=64 approaches full FT.")
def claim_7(ev: Evidence, v: Verdict) -> Verdict:
    """LoRA at r=64, per cell the variant with the best validation gain retention: supported when gain
    retention's lower bound is >= 95% in every learned cell that has it, refuted when an upper bound is < 95%.
    (The r=16 rows are listed beside it.)"""
    fair = ev.fair()
    lora = fair[fair["method"] == "lora"]
    r64 = best_by_validation(lora[lora["r"] == 64], "cell")
    r16 = [_ret(r) for _, r in best_by_validation(lora[lora["r"] == 16], "cell").iterrows() if not pd.isna(r["gain_mean"])]
    if r64.empty:
        v.missing = "fair LoRA r=64 rows beside full FT"
        v.evidence = r16
        return v
    v = threshold_rule(v, ev, r64, 95.0)
    v.evidence += ["r=16: " + e for e in r16]
    return v


@claim(8, "LoRA on all linear layers gives higher quality than q,v only.")
def claim_8(ev: Evidence, v: Verdict) -> Verdict:
    """LoRA all-linear minus LoRA q,v at the same rank in one learned cell, paired: supported when every
    difference is > 0 beyond its interval, refuted when one is < 0 beyond it, else inconclusive."""
    return compare(ev, v, lambda x: x["method"] == "lora" and x["targets"] == "all-linear",
                   lambda y: y["method"] == "lora" and y["targets"] == "qv", lambda x: x["r"],
                   missing="fair LoRA rows with targets all-linear and qv at the same rank in one cell", consistent=True)


@claim(9, "AdaLoRA uses a fixed parameter budget more efficiently than LoRA.")
def claim_9(ev: Evidence, v: Verdict) -> Verdict:
    """AdaLoRA minus LoRA at an equal final trainable-parameter count: AdaLoRA's `params_effective` (the ranks its
    pruning kept, plus the head) within 5% of LoRA's trainable count, same targets, one learned cell, paired;
    supported when every difference is > 0 beyond its interval, refuted when one is < 0 beyond it, else
    inconclusive. A pair at unequal budgets (older records hold no params_effective, and AdaLoRA's allocated
    count is larger) is listed, not judged."""
    fair = ev.fair()
    if fair.empty:
        v.missing = "fair AdaLoRA and LoRA rows (make sweep TASK=fair-adalora)"
        return v
    pairs, unequal = [], []
    for x, y in pairs_of(fair, lambda r: r["method"] == "adalora", lambda r: r["method"] == "lora",
                         lambda r: r["targets"]):
        kept, lora = _variant_params(ev, x, "params_effective"), _variant_params(ev, y, "params_trainable")
        if kept is not None and lora and abs(kept / lora - 1) <= EQUAL_BUDGET:
            pairs.append((x, y))
        else:
            allocated = _variant_params(ev, x, "params_trainable")
            unequal.append(f"not judged, unequal budgets: {x['label']} ({'kept ' + format(kept, ',.0f') if kept else 'allocated ' + format(allocated or 0, ',.0f')}) "
                           f"vs {y['label']} ({lora or 0:,.0f}) in {x['cell']}")
    if not pairs:
        v.missing = ("AdaLoRA and LoRA at an equal final parameter count (params_effective within 5%): "
                     "make sweep TASK=fair-adalora")
        v.evidence += unequal
        return v
    v = paired_rule(v, ev, pairs, consistent=True)
    v.evidence += unequal
    return v


EQUAL_BUDGET = 0.05  # claim 9: the final trainable counts compared may differ by at most this share


def _variant_params(ev: Evidence, row: pd.Series, column: str) -> float | None:
    """The median of `column` over a variant's runs at its selected rate (None when no run records it)."""
    runs = ev.runs[(ev.runs["cell"] == row["cell"]) & (ev.runs["variant"] == row["variant"])]
    if column not in runs or runs[column].isna().all():
        return None
    return float(pd.to_numeric(runs[column], errors="coerce").median())


@claim(10, "IA3 trains far fewer parameters than LoRA.")
def claim_10(ev: Evidence, v: Verdict) -> Verdict:
    """Measured trainable parameters of IA3 against LoRA r=16 (same cell and targets where there is one, else
    the estimator on Llama-3.1-8B): supported when IA3 trains < 10% of LoRA's, refuted when >= 50%. Its
    gain retention is listed beside it: what the saving costs."""
    fair = ev.fair()
    rows = []
    for _, ia3 in fair[fair["method"] == "ia3"].iterrows():
        lora = ev.runs[(ev.runs["cell"] == ia3["cell"]) & (ev.runs["method"] == "lora") & (ev.runs["r"] == 16)]
        mine = ev.runs[(ev.runs["cell"] == ia3["cell"]) & (ev.runs["variant"] == ia3["variant"])]
        if not lora.empty and not mine.empty:
            rows.append((ia3, float(mine["params_trainable"].iloc[0]) / float(lora["params_trainable"].iloc[0])))
    if not rows and {"ia3", "lora"} <= set(ev.estimates):
        rows.append((None, ev.estimates["ia3"]["params_trainable"] / ev.estimates["lora"]["params_trainable"]))
    if not rows:
        v.missing = "IA3 and LoRA r=16 runs in one cell (or the estimator)"
        return v
    for row, share in rows:
        where = f"{row['task']}/{row['model']} (measured)" if row is not None else "Llama-3.1-8B (estimator)"
        v.evidence.append(f"{where}: IA3 trains {100 * share:.2f}% of LoRA r=16's parameters"
                          + (f"; {_ret(row)}" if row is not None else ""))
    worst = max(share for _, share in rows)
    v.estimate = f"IA3 / LoRA r=16 trainable parameters: at most {100 * worst:.2f}%"
    v.verdict = SUPPORTED if worst < 0.10 else REFUTED if worst >= 0.5 else INCONCLUSIVE
    measured = pd.DataFrame([row for row, _ in rows if row is not None])
    v.scope = scope(measured) if not measured.empty else "estimator: Llama-3.1-8B architecture (no training)"
    return v




@claim(11, "LoRA introduces intruder dimensions that full fine-tuning does not, fewer at higher rank, and they go "
           "with forgetting.")
def claim_11(ev: Evidence, v: Verdict) -> Verdict:
    """Three parts from the intruder analysis over the most runs (k=10, epsilon 0.5): (a) the lowest-rank LoRA
    group's (its best-replicated learning rate) mean intruder count per run, with an exact Poisson interval
    (Garwood, widened for over-dispersion; never below 0; analysis/exact.py), lies above full FT's; (b) Spearman's
    rho of rank vs intruders over LoRA runs < 0 with permutation p < 0.05; (c) rho of intruders vs forgetting > 0
    with permutation p < 0.05 (exact over all pairings up to 8 runs) for every base model, each from the analysis
    holding the most of its runs (the encoder's probe and the causal LM's general-English loss are separate
    scales; the causal-LM arm is the paper's measure); where the runs' ties cannot reach p < 0.05 the row says so
    and how many runs it would need. Supported when all three hold; refuted when (a) fails with intervals apart
    the other way, (b)'s rho > 0 with p < 0.05, or a model's (c) rho < 0 with p < 0.05; otherwise inconclusive."""
    from analysis.exact import describe_rank_test, rank_test
    from analysis.intruder_evidence import count_group, link_test, one_per_config

    groups, summary, corr = ev.intruder_groups, ev.intruder_summary, ev.intruder_correlations
    if groups is None or summary is None or corr is None:
        v.missing = "an intruder analysis (python -m analysis.intruder ... --out) under --runs"
        return v
    lora, full = groups[groups["method"] == "lora"], groups[groups["method"] == "full"]
    if lora.empty or full.empty:
        v.missing = "LoRA and full-FT groups in the intruder analysis"
        return v
    lowest = lora[lora["r"] == lora["r"].min()]
    low = count_group(summary, lowest.sort_values("n_seeds", ascending=False, kind="stable").iloc[0])
    f = count_group(summary, full.sort_values("n_seeds", ascending=False, kind="stable").iloc[0])
    part_a, against_a = low["low"] > f["high"], low["high"] < f["low"]
    runs = one_per_config(summary[summary["method"] == "lora"])
    rank = rank_test(runs["r"], runs["intruders"])
    links = [(link, link_test(link)) for link in ev.forgetting_links or [(corr.get("forgetting") or {}) | {"model": "all runs"}]]
    v.evidence = [f"analysis: {corr.get('source', 'intruder analysis')}",
                  f"(a) {low['label']}: {low['text']} intruders per run vs {f['label']}: {f['text']} "
                  "(exact Poisson 95% intervals)",
                  f"(b) rank vs intruders over {len(runs)} LoRA runs: {describe_rank_test(rank)}"] + [
        f"(c) {link['model']}: intruders vs forgetting: {describe_rank_test(test)}"
        + (f" ({link['source']})" if link.get("source") else "") for link, test in links]
    v.estimate = f"(a) {'yes' if part_a else 'no'}, (b) rho {rank['rho']:+.2f}, (c) " + ", ".join(
        f"{link['model']} rho {test['rho']:+.2f}" + (" (too few runs)" if test["p_min"] >= 0.05 else "")
        for link, test in links)
    part_c = all(test["rho"] > 0 and test["p"] < 0.05 for _, test in links)
    against_c = any(test["rho"] < 0 and test["p"] < 0.05 for _, test in links)
    holds = [part_a, rank["rho"] < 0 and rank["p"] < 0.05, part_c]
    against = [against_a, rank["rho"] > 0 and rank["p"] < 0.05, against_c]
    v.verdict = REFUTED if any(against) else SUPPORTED if all(holds) else INCONCLUSIVE
    return v


@claim(12, "A merged adapter adds zero inference latency; an unmerged one adds a small overhead.")
def claim_12(ev: Evidence, v: Verdict) -> Verdict:
    """From serve_bench (wall time of a generation request; every mode runs once per round, back to back): per
    batch size the ratio merged / base and unmerged / merged within each round, with a 95% t-interval over the
    rounds (on log ratios; analysis/latency.py). Supported when every merged / base upper bound is <= 1.05 (within
    5% of the base) and every unmerged / merged upper bound <= 1.25; refuted when a merged / base lower bound is
    > 1.10; otherwise inconclusive. A record without per-round samples (an old file) is listed, not counted."""
    from analysis.latency import describe, round_ratios

    if not ev.serve:
        v.missing = "serve_bench.json records (python -m harness.adapters.serve_bench <run> --out ...)"
        return v
    rows = [row for rec in ev.serve for row in round_ratios(rec)]
    if not rows:
        v.missing = "serve_bench records with base, merged and unmerged modes"
        return v
    v.evidence = [describe(row) for row in rows]
    paired = [row for row in rows if row["rounds"] >= 2]
    if not paired:
        v.missing = "per-round timings (samples_full_s): these serve_bench records have no per-round data"
        return v
    worst_merged = max(paired, key=lambda row: row["merged_vs_base_high"])
    worst_unmerged = max(paired, key=lambda row: row["unmerged_vs_merged_high"])
    v.estimate = (f"largest upper bounds: merged {100 * (worst_merged['merged_vs_base_high'] - 1):+.1f}% vs base "
                  f"(batch {worst_merged['batch']}), unmerged {100 * (worst_unmerged['unmerged_vs_merged_high'] - 1):+.1f}%"
                  f" vs merged (batch {worst_unmerged['batch']})")
    refuted = any(row["merged_vs_base_low"] > 1.10 for row in paired)
    supported = all(row["merged_vs_base_high"] <= 1.05 and row["unmerged_vs_merged_high"] <= 1.25 for row in paired)
    v.verdict = REFUTED if refuted else SUPPORTED if supported else INCONCLUSIVE
    return v


@claim(13, "Merging task adapters with TIES or DARE degrades only slightly against the individual adapters.")
def claim_13(ev: Evidence, v: Verdict) -> Verdict:
    """From merge tables made by `merge --select` (weight and density chosen on validation, scored on test): mean
    retention of the TIES / DARE merges against the individual adapters; supported when every one is >= 90%,
    refuted when one is < 75%, else inconclusive. The untuned base and the union adapter are shown beside them. A
    table whose weights were fixed by hand (no validation choice) is listed, not judged."""
    values = []
    for table in ev.merges:
        chosen = bool(table.get("selection"))
        mean = table.get("mean") or {}
        for name, share in (mean.get("retention") or {}).items():
            if name.startswith(("ties", "dare")) and not name.endswith("_factors") and share is not None:
                if chosen:
                    values.append(share)
                v.evidence.append(f"{table.get('name', 'merge')}: {name} {100 * share:.1f}%"
                                  + ("" if chosen else " (not judged: weights fixed by hand, not chosen on validation)"))
        if mean.get("own"):
            v.evidence.append(f"{table.get('name', 'merge')}: untuned base {100 * (mean.get('base') or 0) / mean['own']:.1f}% "
                              f"of the own adapters, union adapter "
                              + (f"{100 * mean['retention']['union']:.1f}%" if (mean.get("retention") or {}).get("union") is not None else "not run"))
    if not values:
        v.missing = ("a merge table chosen on validation: make sweep TASK=merge, then per seed "
                     "python -m harness.adapters.merge ... --select (results/study/budget/merge.md)")
        return v
    v.estimate = f"mean retention {100 * min(values):.1f}-{100 * max(values):.1f}%"
    v.verdict = SUPPORTED if min(values) >= 0.90 else REFUTED if min(values) < 0.75 else INCONCLUSIVE
    v.scope = "; ".join(f"{t.get('name', 'merge')}: {len(t.get('runs') or [])} adapters, {t.get('n_test') or t.get('n_eval')} "
                        "test rows per task, weight and density chosen on validation" for t in ev.merges if t.get("selection"))
    return v


@claim(14, "A 7B model needs ~70 GB for full FT (FP16), ~28 GB for LoRA r=16, ~10-14 GB for QLoRA; 70B full FT "
           "needs over 1 TB.")
def claim_14(ev: Evidence, v: Verdict) -> Verdict:
    """The estimator (CUDA; estimated, not measured) at the workload the quoted figures assume (the QLoRA paper's:
    batch 1 x 512 tokens, gradient checkpointing; QLoRA with paged AdamW 8-bit; analysis/memory_claims.py) for
    Llama-2-7B pure-bf16 full FT, LoRA r=16 q,v, QLoRA r=16 q,v and Llama-3.1-70B mixed-precision full FT, each
    row's workload stated beside it: supported when every prediction lies within 25% of the quoted figure (the
    range's ends for QLoRA), refuted when one is off by more than 50%. The memory frontier (largest batch x length
    per 12 / 24 / 80 GiB) is written beside the ledger."""
    from analysis.memory_claims import CLAIM_14, workload

    if not all(k in ev.estimates for k in CLAIM_14):
        v.missing = "estimator rows " + ", ".join(k for k in CLAIM_14 if k not in ev.estimates)
        return v
    errors = []
    for key, (_, (low, high)) in CLAIM_14.items():
        est = ev.estimates[key]
        gb = est["memory"]["peak"] / 1e9
        off = 0.0 if low <= gb <= high else (gb / low - 1 if gb < low else gb / high - 1)
        errors.append(abs(off))
        quoted = f"over {low:g}" if math.isinf(high) else f"{low:g}" + (f"-{high:g}" if high != low else "")
        v.evidence.append(f"{key}: {gb:.1f} GB estimated vs quoted {quoted} GB ({100 * off:+.0f}%) at {workload(est)}")
    v.estimate = f"largest miss {100 * max(errors):.0f}%"
    v.verdict = SUPPORTED if max(errors) <= 0.25 else REFUTED if max(errors) > 0.5 else INCONCLUSIVE
    return v


@claim(15, "LoRA r=16 on q,v of Llama-3.1-8B trains 6,815,744 parameters (< 0.1%).")
def claim_15(ev: Evidence, v: Verdict) -> Verdict:
    """peft's trainable count on Llama-3.1-8B's architecture (the estimator builds it on the meta device):
    supported when it equals 6,815,744 and is < 0.1% of the total, refuted otherwise."""
    est = ev.estimates.get("lora")
    if not est:
        v.missing = "the estimator's Llama-3.1-8B LoRA r=16 q,v row"
        return v
    n, pct = est["params_trainable"], est["trainable_pct"]
    v.estimate = f"{n:,} trainable = {pct:.3f}% of {est['params_total']:,}"
    v.evidence = ["harness.estimate model=llama-3.1-8b method=lora r=16 targets=qv"]
    v.verdict = SUPPORTED if n == 6_815_744 and pct < 0.1 else REFUTED
    v.scope = "estimator: Llama-3.1-8B architecture on the meta device (no training)"
    return v


def ledger(ev: Evidence) -> list[Verdict]:
    """Every claim's verdict, in claim order."""
    return [run(ev) for _, _, run in sorted(CLAIMS, key=lambda c: c[0])]

