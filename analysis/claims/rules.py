"""The claims' decision rules and their registry (`claim`, `CLAIMS`, `ledger`): each commonly repeated claim about
PEFT vs full fine-tuning, the rule a machine applies to the measured evidence (its function's docstring), and the
verdict. This module holds the quality claims 1-9; rules_costs.py 10-15, rules_2025.py 16-18 and
rules_2025_tradeoffs.py 19-21 register theirs when this module is imported. `analysis/claims/report.py` gathers the
evidence from the records and writes the ledger; analysis/claims/verdicts.py holds the labels, the evidence and the shared
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

import importlib
from collections.abc import Callable
from typing import Any

import pandas as pd

from analysis.choices import best_by_validation
from analysis.claims.verdicts import (ABOVE_RANGE, INCONCLUSIVE, LABELS, MIN_SEEDS, NOT_LEARNED, NOT_RUN, REFUTED, SHOWN,
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


def ledger(ev: Evidence) -> list[Verdict]:
    """Every claim's verdict, in claim order."""
    return [run(ev) for _, _, run in sorted(CLAIMS, key=lambda c: c[0])]


# claims 10-15 and 16-21 are in their own modules, which register on import through `claim` above (defined
# before this line, so importing any of them first also works)
for _module in ("rules_costs", "rules_2025", "rules_2025_tradeoffs"):
    importlib.import_module(f"analysis.claims.{_module}")
