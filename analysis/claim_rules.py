"""The claims' decision rules: each commonly repeated claim about PEFT vs full fine-tuning, the rule a machine
applies to the measured evidence (its function's docstring), and the verdict. `analysis/claims.py` gathers the
evidence from the records and writes the ledger.

Verdicts: `supported`, `refuted`, `inconclusive` (evidence exists, the interval straddles the line), `not run`
(the evidence the rule needs is missing; the row says what).

Evidence (`Evidence`):
- *Score claims* use the retention table (analysis/tables.py) over every run folder: each variant at its
  validation-selected learning rate, test mean with a 95% t-interval over seeds, retention vs full FT at full FT's
  own selected rate with Fieller's 95% interval. Only *fair* rows count: at least `MIN_SEEDS` seeds and at least
  two learning rates tried (the fair-comparison protocol); rows selected at a grid edge count and are named in
  the evidence. A difference between two variants of one cell is a Welch t-interval on their per-seed scores.
- *Intruder claims* use `intruder_groups.csv`, `intruder_summary.csv` and `intruder_correlations.json` written by
  `analysis.intruder`.
- *Cost claims* use the estimator (harness/estimate/; labelled estimated) and the measured records.
- *Latency and merging claims* use `serve_bench.json` and `merge_table.json` files.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd
from scipy import stats


SUPPORTED, REFUTED, INCONCLUSIVE, NOT_RUN = "supported", "refuted", "inconclusive", "not run"
MIN_SEEDS = 3
NARROW_TASKS = ("instruct", "style", "extract", "classify")


@dataclass
class Verdict:
    claim: int
    text: str
    verdict: str
    estimate: str = ""
    evidence: list[str] = field(default_factory=list)
    missing: str = ""
    rule: str = ""


@dataclass
class Evidence:
    """Everything the rules read, gathered once from the records."""

    retention: pd.DataFrame                     # analysis.tables.retention over every run under --runs
    runs: pd.DataFrame                          # every ok run at its variant's selected rate (per-seed scores)
    intruder_groups: pd.DataFrame | None = None
    intruder_summary: pd.DataFrame | None = None
    intruder_correlations: dict[str, Any] | None = None
    forgetting_links: list[dict[str, Any]] = field(default_factory=list)  # per base model: rho, p, n, source
    estimates: dict[str, dict[str, Any]] = field(default_factory=dict)   # name -> Estimate.as_dict()
    serve: list[dict[str, Any]] = field(default_factory=list)
    merges: list[dict[str, Any]] = field(default_factory=list)
    records: pd.DataFrame | None = None         # every run at every rate (claims 16-21, analysis/claim_rules_2025.py)

    def fair(self) -> pd.DataFrame:
        """Retention rows gathered under the fair-comparison protocol."""
        ret = self.retention
        if ret.empty:
            return ret
        tried = ret["lrs_tried"].fillna("").astype(str).map(lambda s: len([x for x in s.split(",") if x]))
        return ret[(ret["n_seeds"] >= MIN_SEEDS) & (tried >= 2)]

    def scores(self, cell: str, variant: str) -> np.ndarray:
        rows = self.runs[(self.runs["cell"] == cell) & (self.runs["variant"] == variant)]
        return rows["score"].to_numpy(dtype=float)


CLAIMS: list[tuple[int, str, Callable[[Evidence], Verdict]]] = []


def claim(number: int, text: str):
    def register(fn: Callable[[Evidence, Verdict], Verdict]):
        def run(ev: Evidence) -> Verdict:
            return fn(ev, Verdict(number, text, NOT_RUN, rule=" ".join((fn.__doc__ or "").split())))
        CLAIMS.append((number, text, run))
        return run
    return register


# ---- shared rules -------------------------------------------------------------------------------------------

def _ret(row: pd.Series) -> str:
    low, high = row.get("retention_low"), row.get("retention_high")
    interval = "" if pd.isna(low) else f" [{low:.1f}, {high:.1f}]"
    edge = " (grid edge)" if row.get("grid_edge") else ""
    return f"{row['task']}/{row['model']} {row['label']}: {row['retention_mean']:.1f}%{interval} n={int(row['n_seeds'])}{edge}"


def threshold_rule(v: Verdict, rows: pd.DataFrame, line: float, *, every: bool = True) -> Verdict:
    """Supported when the lower bound of retention's interval is >= `line` in every row (or, `every=False`, in a
    majority of cells); refuted when an upper bound is < `line` (a majority); otherwise inconclusive."""
    rows = rows[rows["retention_mean"].notna() & rows["retention_low"].notna()]
    if rows.empty:
        return v
    v.evidence = [_ret(r) for _, r in rows.iterrows()]
    v.estimate = f"retention {rows['retention_mean'].min():.1f}-{rows['retention_mean'].max():.1f}% over {len(rows)} rows"
    above, below = (rows["retention_low"] >= line), (rows["retention_high"] < line)
    if every:
        v.verdict = REFUTED if below.any() else SUPPORTED if above.all() else INCONCLUSIVE
    else:
        half = len(rows) / 2
        v.verdict = SUPPORTED if above.sum() > half else REFUTED if below.sum() > half else INCONCLUSIVE
    return v


def difference(ev: Evidence, a: pd.Series, b: pd.Series) -> tuple[float, float, float]:
    """Mean test-score difference a - b of two variants of one cell, with a 95% Welch t-interval."""
    x, y = ev.scores(a["cell"], a["variant"]), ev.scores(b["cell"], b["variant"])
    diff = float(x.mean() - y.mean())
    vx, vy = x.var(ddof=1) / len(x), y.var(ddof=1) / len(y)
    se = math.sqrt(vx + vy)
    if se == 0:
        return diff, diff, diff
    dof = (vx + vy) ** 2 / (vx ** 2 / (len(x) - 1) + vy ** 2 / (len(y) - 1))
    half = stats.t.ppf(0.975, dof) * se
    return diff, diff - half, diff + half


def paired_rule(v: Verdict, ev: Evidence, pairs: list[tuple[pd.Series, pd.Series]], *, consistent: bool) -> Verdict:
    """Supported when a - b > 0 beyond its interval in every pair (`consistent`) or in some pair with none
    against; refuted when some pair has a - b < 0 beyond its interval (or, not `consistent`, none favours a and
    every interval excludes a gain); otherwise inconclusive."""
    if not pairs:
        return v
    lows, highs = [], []
    for a, b in pairs:
        diff, low, high = difference(ev, a, b)
        lows.append(low)
        highs.append(high)
        v.evidence.append(f"{a['task']}/{a['model']} {a['label']} - {b['label']}: {diff:+.4f} [{low:+.4f}, {high:+.4f}]")
    v.estimate = f"{len(pairs)} comparison(s); differences in {pairs[0][0]['primary_metric']}"
    if any(h < 0 for h in highs):
        v.verdict = REFUTED
    elif all(lo > 0 for lo in lows) or (not consistent and any(lo > 0 for lo in lows)):
        v.verdict = SUPPORTED
    else:
        v.verdict = INCONCLUSIVE
    return v


def compare(ev: Evidence, v: Verdict, a: Callable[[pd.Series], bool], b: Callable[[pd.Series], bool],
            key: Callable[[pd.Series], Any], *, missing: str, consistent: bool) -> Verdict:
    """`paired_rule` over every (a, b) pair of fair rows in one cell with the same `key`; not run without one."""
    pairs = _pairs(ev.fair(), a, b, key)
    if not pairs:
        v.missing = missing
        return v
    return paired_rule(v, ev, pairs, consistent=consistent)


def _peft(rows: pd.DataFrame) -> pd.DataFrame:
    return rows[rows["method"] != "full"]


def _pairs(fair: pd.DataFrame, a: Callable[[pd.Series], bool], b: Callable[[pd.Series], bool],
           key: Callable[[pd.Series], Any]) -> list[tuple[pd.Series, pd.Series]]:
    """(a, b) rows of the same cell with the same `key` (e.g. rank and targets)."""
    out = []
    for _, x in fair.iterrows():
        if not a(x):
            continue
        for _, y in fair.iterrows():
            if y["cell"] == x["cell"] and b(y) and key(x) == key(y):
                out.append((x, y))
    return out


# ---- the claims ---------------------------------------------------------------------------------------------

@claim(1, "PEFT recovers 90-95% of full fine-tuning quality on most tasks.")
def claim_1(ev: Evidence, v: Verdict) -> Verdict:
    """Per task (and model) the best-retaining PEFT variant over its cells (fair rows; two budgets of one task are
    one task); supported when retention's lower bound is >= 90% for a majority of tasks (at least two), refuted
    when the upper bound is < 90% for a majority."""
    fair = _peft(ev.fair())
    best = fair.sort_values("retention_mean", ascending=False).groupby(["task", "model"]).head(1) if len(fair) else fair
    if len(best) < 2:
        v.missing = f"fair retention rows on at least 2 tasks (have {len(best)})"
        return v
    return threshold_rule(v, best, 90.0, every=False)


@claim(2, "For instruction following, style, output format and narrow classification or extraction, well-tuned "
          "LoRA is essentially indistinguishable from a full fine-tune.")
def claim_2(ev: Evidence, v: Verdict) -> Verdict:
    """LoRA variants (any rank, targets) on the tasks instruct, style, extract, classify: per cell the best LoRA
    variant; supported when retention's lower bound is >= 95% in every cell, refuted when an upper bound is < 95%."""
    fair = ev.fair()
    lora = fair[(fair["method"] == "lora") & fair["task"].isin(NARROW_TASKS)]
    best = lora.sort_values("retention_mean", ascending=False).groupby("cell").head(1)
    missing = [t for t in NARROW_TASKS if t not in set(best["task"])]
    v = threshold_rule(v, best, 95.0)
    if missing:
        v.missing = "fair LoRA rows for " + ", ".join(missing)
    return v


@claim(3, "Full fine-tuning holds a meaningful edge for injecting new knowledge.")
def claim_3(ev: Evidence, v: Verdict) -> Verdict:
    """On the knowledge task, per cell the best PEFT variant: supported when retention's upper bound is < 95% in
    every cell (full FT better by more than 5%), refuted when a lower bound is >= 95%."""
    fair = _peft(ev.fair())
    best = fair[fair["task"] == "knowledge"].sort_values("retention_mean", ascending=False).groupby("cell").head(1)
    best = best[best["retention_low"].notna()]
    if best.empty:
        v.missing = "a fair knowledge sweep (full FT and PEFT variants, lr_search, 3 seeds, a converged budget)"
        return v
    v.evidence = [_ret(r) for _, r in best.iterrows()]
    v.estimate = f"best PEFT retention {best['retention_mean'].max():.1f}%"
    v.verdict = SUPPORTED if (best["retention_high"] < 95).all() else REFUTED if (best["retention_low"] >= 95).any() else INCONCLUSIVE
    return v


@claim(4, "QLoRA recovers 80-90% of full fine-tuning quality.")
def claim_4(ev: Evidence, v: Verdict) -> Verdict:
    """QLoRA rows: supported when retention's lower bound is >= 80% in every cell, refuted when an upper bound is
    < 80%; otherwise inconclusive (the claim's 90% is a ceiling people expect, reported in the estimate)."""
    fair = ev.fair()
    rows = fair[fair["method"] == "qlora"]
    if rows.empty:
        v.missing = "fair QLoRA rows"
        return v
    return threshold_rule(v, rows, 80.0)


@claim(5, "DoRA consistently outperforms LoRA at the same rank.")
def claim_5(ev: Evidence, v: Verdict) -> Verdict:
    """DoRA minus LoRA test score in each cell with both at the same rank and targets: supported when every
    difference is > 0 beyond its 95% Welch interval, refuted when one is < 0 beyond it, else inconclusive."""
    return compare(ev, v, lambda x: x["method"] == "dora", lambda y: y["method"] == "lora",
                   lambda x: (x["r"], x["targets"]), missing="fair DoRA and LoRA rows at the same rank and targets",
                   consistent=True)


@claim(6, "rsLoRA trains stably at higher ranks and recovers quality there, where plain LoRA (alpha = 2r) does not.")
def claim_6(ev: Evidence, v: Verdict) -> Verdict:
    """rsLoRA minus LoRA test score at rank >= 64, same cell and targets: supported when some difference is > 0
    beyond its interval and none < 0; refuted when one is < 0 beyond it or none is > 0 with every interval
    excluding a gain; otherwise inconclusive."""
    return compare(ev, v, lambda x: x["method"] == "rslora" and (x["r"] or 0) >= 64, lambda y: y["method"] == "lora",
                   lambda x: (x["r"], x["targets"]),
                   missing="fair rsLoRA and LoRA rows at rank >= 64 (same cell and targets)", consistent=False)


@claim(7, "Higher rank adds capacity; r=16 is a reliable start; r=64 approaches full FT.")
def claim_7(ev: Evidence, v: Verdict) -> Verdict:
    """LoRA at r=64: supported when retention's lower bound is >= 95% in every cell that has it, refuted when an
    upper bound is < 95%. (The r=16 rows are listed beside it.)"""
    fair = ev.fair()
    lora = fair[fair["method"] == "lora"]
    r64 = lora[lora["r"] == 64]
    if r64.empty:
        v.missing = "fair LoRA r=64 rows beside full FT"
        v.evidence = [_ret(r) for _, r in lora[lora["r"] == 16].iterrows()]
        return v
    v = threshold_rule(v, r64, 95.0)
    v.evidence += [_ret(r) for _, r in lora[lora["r"] == 16].iterrows()]
    return v


@claim(8, "LoRA on all linear layers gives higher quality than q,v only.")
def claim_8(ev: Evidence, v: Verdict) -> Verdict:
    """LoRA all-linear minus LoRA q,v at the same rank in one cell: supported when every difference is > 0
    beyond its interval, refuted when one is < 0 beyond it, else inconclusive."""
    return compare(ev, v, lambda x: x["method"] == "lora" and x["targets"] == "all-linear",
                   lambda y: y["method"] == "lora" and y["targets"] == "qv", lambda x: x["r"],
                   missing="fair LoRA rows with targets all-linear and qv at the same rank in one cell", consistent=True)


@claim(9, "AdaLoRA uses a fixed parameter budget more efficiently than LoRA.")
def claim_9(ev: Evidence, v: Verdict) -> Verdict:
    """AdaLoRA minus LoRA at the same final rank and targets: supported when every difference is > 0 beyond its
    interval, refuted when one is < 0 beyond it, else inconclusive."""
    return compare(ev, v, lambda x: x["method"] == "adalora", lambda y: y["method"] == "lora",
                   lambda x: (x["r"], x["targets"]), missing="fair AdaLoRA and LoRA rows at the same rank and targets",
                   consistent=True)


@claim(10, "IA3 trains far fewer parameters than LoRA.")
def claim_10(ev: Evidence, v: Verdict) -> Verdict:
    """Measured trainable parameters of IA3 against LoRA r=16 (same cell and targets where there is one, else
    the estimator on Llama-3.1-8B): supported when IA3 trains < 10% of LoRA's, refuted when >= 50%. Its
    retention is listed beside it: what the saving costs."""
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
                          + (f"; retention {_ret(row)}" if row is not None else ""))
    worst = max(share for _, share in rows)
    v.estimate = f"IA3 / LoRA r=16 trainable parameters: at most {100 * worst:.2f}%"
    v.verdict = SUPPORTED if worst < 0.10 else REFUTED if worst >= 0.5 else INCONCLUSIVE
    return v


@claim(11, "LoRA introduces intruder dimensions that full fine-tuning does not, fewer at higher rank, and they go "
           "with forgetting.")
def claim_11(ev: Evidence, v: Verdict) -> Verdict:
    """Three parts from the intruder analysis over the most runs (k=10, epsilon 0.5): (a) the lowest-rank LoRA
    group's (its best-replicated learning rate) interval for the intruder count lies above full FT's; (b)
    Spearman's rho of rank vs intruders over LoRA runs < 0 with p < 0.05; (c) rho of intruders vs forgetting > 0
    with p < 0.05 for every base model, each from the analysis holding the most of its runs (the encoder's probe
    and the causal LM's general-English loss are separate scales; the causal-LM arm is the paper's measure).
    Supported when all three hold; refuted when (a) fails with intervals apart the other way, (b)'s rho > 0 with
    p < 0.05, or a model's (c) rho < 0 with p < 0.05; otherwise inconclusive."""
    groups, summary, corr = ev.intruder_groups, ev.intruder_summary, ev.intruder_correlations
    if groups is None or summary is None or corr is None:
        v.missing = "an intruder analysis (python -m analysis.intruder ... --out) under --runs"
        return v
    lora, full = groups[groups["method"] == "lora"], groups[groups["method"] == "full"]
    if lora.empty or full.empty:
        v.missing = "LoRA and full-FT groups in the intruder analysis"
        return v
    lowest = lora[lora["r"] == lora["r"].min()]
    low = lowest.sort_values("n_seeds", ascending=False, kind="stable").iloc[0]  # its best-replicated group
    f = full.sort_values("n_seeds", ascending=False, kind="stable").iloc[0]
    part_a = low["intruders_low"] > f["intruders_high"]
    against_a = low["intruders_high"] < f["intruders_low"]
    runs = summary[summary["method"] == "lora"]
    if {"label", "seed"} <= set(runs.columns):  # one training config reached by two sweeps is one run
        runs = runs.drop_duplicates(["label", "seed"])
    rho_r, p_r = stats.spearmanr(runs["r"], runs["intruders"]) if runs["r"].nunique() > 1 else (math.nan, math.nan)
    links = ev.forgetting_links or [(corr.get("forgetting") or {}) | {"model": "all runs"}]
    value = lambda link, key: math.nan if link.get(key) is None else link[key]  # noqa: E731  (null: too few runs)
    v.evidence = [f"analysis: {corr.get('source', 'intruder analysis')}"] + [
        f"(a) {low['label']}: {low['intruders_mean']:.1f} [{low['intruders_low']:.1f}, {low['intruders_high']:.1f}] "
        f"intruders vs {f['label']}: {f['intruders_mean']:.1f} [{f['intruders_low']:.1f}, {f['intruders_high']:.1f}]",
        f"(b) rank vs intruders over {len(runs)} LoRA runs: rho {rho_r:+.2f} (p {p_r:.3g})"] + [
        f"(c) {link['model']}: intruders vs forgetting over {link.get('n')} runs: rho {value(link, 'rho'):+.2f} "
        f"(p {value(link, 'p'):.3g})" + (f" ({link['source']})" if link.get("source") else "") for link in links]
    v.estimate = f"(a) {'yes' if part_a else 'no'}, (b) rho {rho_r:+.2f}, (c) " + ", ".join(
        f"{link['model']} rho {value(link, 'rho'):+.2f}" for link in links)
    part_c = all(value(link, "rho") > 0 and value(link, "p") < 0.05 for link in links)
    against_c = any(value(link, "rho") < 0 and value(link, "p") < 0.05 for link in links)
    holds = [part_a, rho_r < 0 and p_r < 0.05, part_c]
    against = [against_a, rho_r > 0 and p_r < 0.05, against_c]
    v.verdict = REFUTED if any(against) else SUPPORTED if all(holds) else INCONCLUSIVE
    return v


@claim(12, "A merged adapter adds zero inference latency; an unmerged one adds a small overhead.")
def claim_12(ev: Evidence, v: Verdict) -> Verdict:
    """From serve_bench (latency per generated token): supported when merged is within 5% of the base model and
    unmerged within 25% of merged; refuted when merged is > 10% slower than the base."""
    if not ev.serve:
        v.missing = "serve_bench.json records (python -m harness.adapters.serve_bench <run> --out ...)"
        return v
    worst_merged, worst_unmerged = 0.0, 0.0
    for rec in ev.serve:  # serve_bench.json: modes[mode][batch size] = {ms_per_token, ...}
        modes = rec.get("modes") or {}
        if not {"base", "merged", "unmerged"} <= set(modes):
            continue
        for batch in sorted(modes["merged"], key=int):
            base, merged, unmerged = (modes[m][batch]["ms_per_token"] for m in ("base", "merged", "unmerged"))
            worst_merged = max(worst_merged, merged / base - 1)
            worst_unmerged = max(worst_unmerged, unmerged / merged - 1)
            v.evidence.append(f"{rec.get('run')} batch {batch}: merged {100 * (merged / base - 1):+.1f}% vs base, "
                              f"unmerged {100 * (unmerged / merged - 1):+.1f}% vs merged")
    if not v.evidence:
        v.missing = "serve_bench records with base, merged and unmerged modes"
        return v
    v.estimate = f"merged up to {100 * worst_merged:+.1f}%, unmerged up to {100 * worst_unmerged:+.1f}%"
    v.verdict = REFUTED if worst_merged > 0.10 else SUPPORTED if worst_merged <= 0.05 and worst_unmerged <= 0.25 else INCONCLUSIVE
    return v


@claim(13, "Merging task adapters with TIES or DARE degrades only slightly against the individual adapters.")
def claim_13(ev: Evidence, v: Verdict) -> Verdict:
    """From merge tables: mean retention of the TIES / DARE task-vector merges against the individual adapters;
    supported when every one is >= 90%, refuted when one is < 75%, else inconclusive."""
    values = []
    for table in ev.merges:
        for name, share in ((table.get("mean") or {}).get("retention") or {}).items():
            if name.startswith(("ties", "dare")) and not name.endswith("_factors") and share is not None:
                values.append(share)
                v.evidence.append(f"{table.get('name', 'merge')}: {name} {100 * share:.1f}%")
    if not values:
        v.missing = "a multi-task merge table (python -m harness.adapters.merge ... --combine ties,dare_ties) under --runs"
        return v
    v.estimate = f"mean retention {100 * min(values):.1f}-{100 * max(values):.1f}%"
    v.verdict = SUPPORTED if min(values) >= 0.90 else REFUTED if min(values) < 0.75 else INCONCLUSIVE
    return v


@claim(14, "A 7B model needs ~70 GB for full FT (FP16), ~28 GB for LoRA r=16, ~10-14 GB for QLoRA; 70B full FT "
           "needs over 1 TB.")
def claim_14(ev: Evidence, v: Verdict) -> Verdict:
    """The estimator (CUDA, batch 8 x 256, AdamW; estimated, not measured) for Llama-2-7B pure-bf16 full FT,
    LoRA r=16 q,v, QLoRA r=16 q,v and Llama-3.1-70B mixed-precision full FT: supported when every prediction
    lies within 25% of the quoted figure (the range's ends for QLoRA), refuted when one is off by more than 50%."""
    quoted = {"7b-full-bf16": (70, 70), "7b-lora": (28, 28), "7b-qlora": (10, 14), "70b-full": (1000, math.inf)}
    if not all(k in ev.estimates for k in quoted):
        v.missing = "estimator rows " + ", ".join(k for k in quoted if k not in ev.estimates)
        return v
    errors = []
    for key, (low, high) in quoted.items():
        gb = ev.estimates[key]["memory"]["peak"] / 1e9
        off = 0.0 if low <= gb <= high else (gb / low - 1 if gb < low else gb / high - 1)
        errors.append(abs(off))
        v.evidence.append(f"{key}: {gb:.1f} GB estimated vs quoted {low:g}" + (f"-{high:g}" if high != low else "")
                          + f" GB ({100 * off:+.0f}%)")
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
    return v


def ledger(ev: Evidence) -> list[Verdict]:
    """Every claim's verdict, in claim order."""
    return [run(ev) for _, _, run in sorted(CLAIMS, key=lambda c: c[0])]

