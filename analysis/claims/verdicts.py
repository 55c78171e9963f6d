"""The ledger's framework: verdict labels, the evidence the rules read, and the shared decision rules (a threshold,
a claimed range, a paired difference), each with its scope and, when it is inconclusive, the runs that would
decide it (from the pilot's seed and item variance: analysis/bootstrap.py power).

Labels (machine values in claims.json): `supported`, `refuted` (printed "refuted at this scale": the study's
models, tasks, budgets, items and seeds are the verdict's scope), `above the claimed range` (a range claim whose
interval lies wholly above the range), `inconclusive` (the interval straddles a line), `not learned` (every cell
the claim rests on has full FT not clearing its floor: nothing to retain), `not run` (evidence missing).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

import pandas as pd

from analysis import bootstrap as boot

SUPPORTED, REFUTED, INCONCLUSIVE, NOT_RUN = "supported", "refuted", "inconclusive", "not run"
ABOVE_RANGE, NOT_LEARNED = "above the claimed range", "not learned"
LABELS = (SUPPORTED, ABOVE_RANGE, REFUTED, INCONCLUSIVE, NOT_LEARNED, NOT_RUN)
SHOWN = {REFUTED: "refuted at this scale"}  # how a label reads in the ledger
MIN_SEEDS = 3


@dataclass
class Verdict:
    claim: int
    text: str
    verdict: str
    estimate: str = ""
    evidence: list[str] = field(default_factory=list)
    missing: str = ""
    rule: str = ""
    scope: str = ""
    plan: list[str] = field(default_factory=list)   # inconclusive: the seeds and items that would decide it
    earlier: str = ""   # set when the study the ledger reads has not run this claim and the verdict is an earlier
                        # study's (`--earlier`): that study's name; its records alone decide it, never mixed


def counts_line(verdicts: Iterable["Verdict"], every: bool = True) -> str:
    """"3 supported, 1 refuted at this scale, ..." with, per label, how many are an earlier study's (`every`: also
    the main labels no verdict has)."""
    verdicts, parts = list(verdicts), []
    for k in LABELS:
        vs = [v for v in verdicts if v.verdict == k]
        if vs or (every and k in (SUPPORTED, REFUTED, INCONCLUSIVE, NOT_RUN)):
            old = sorted({v.earlier for v in vs if v.earlier})
            parts.append(f"{len(vs)} {SHOWN.get(k, k)}" + (f" ({sum(bool(v.earlier) for v in vs)} from "
                                                             f"{', '.join(old)})" if old else ""))
    return ", ".join(parts)


def shown(v: "Verdict") -> str:
    """A verdict's label as the ledger prints it, with the earlier study it comes from."""
    return SHOWN.get(v.verdict, v.verdict) + (f" ({v.earlier})" if v.earlier else "")


@dataclass
class Evidence:
    """Everything the rules read, gathered once from the records."""

    retention: pd.DataFrame                     # analysis.gain.gain_table (raw and gain retention, floors)
    runs: pd.DataFrame                          # every ok run at its variant's selected rate (per-seed scores)
    intruder_groups: pd.DataFrame | None = None
    intruder_summary: pd.DataFrame | None = None
    intruder_correlations: dict[str, Any] | None = None
    forgetting_links: list[dict[str, Any]] = field(default_factory=list)  # per base model: rho, p, n, source
    estimates: dict[str, dict[str, Any]] = field(default_factory=dict)   # name -> Estimate.as_dict()
    serve: list[dict[str, Any]] = field(default_factory=list)
    merges: list[dict[str, Any]] = field(default_factory=list)
    study: Any = None                           # analysis.gain.Study: the arms behind the table (None: tests)
    optimism: pd.DataFrame | None = None        # analysis.choices.selection_optimism
    memory_frontier: list[dict[str, Any]] = field(default_factory=list)  # analysis.claims.memory.memory_frontier
    records: pd.DataFrame | None = None         # every run at every rate (claims 16-21, analysis/claims/rules_2025.py)

    def fair(self) -> pd.DataFrame:
        """Retention rows gathered under the fair-comparison protocol: >= MIN_SEEDS seeds, >= 2 rates tried."""
        ret = self.retention
        if ret.empty:
            return ret
        tried = ret["lrs_tried"].fillna("").astype(str).map(lambda s: len([x for x in s.split(",") if x]))
        return ret[(ret["n_seeds"] >= MIN_SEEDS) & (tried >= 2)]


# ---- describing rows and scope --------------------------------------------------------------------------------

def fmt_gain(row: pd.Series) -> str:
    """"style/smollm2-135m lora r=16 qv: gain 0.5% [-406, 407] (raw 96.3%) vs floor copy; seeds 1,2; 40 items"."""
    low, high = row.get("gain_low"), row.get("gain_high")
    interval = "" if pd.isna(low) else f" [{low:.1f}, {high:.1f}]"
    raw = row.get("retention_mean")
    seeds = row.get("seeds_reported", row.get("seeds", ""))
    parts = [f"{row['task']}/{row['model']} {row['label']}: gain {row['gain_mean']:.1f}%{interval}",
             "" if pd.isna(raw) else f" (raw {raw:.1f}%)", f" vs floor {row.get('floor_name') or '?'}",
             f"; seeds {seeds}" if isinstance(seeds, str) and seeds else f" n={int(row['n_seeds'])}",
             f", {int(row['n_items'])} items" if not pd.isna(row.get("n_items", math.nan)) else
             f", {int(row['test_items'])} items (seeds only)" if not pd.isna(row.get("test_items", math.nan)) else "",
             " (grid edge)" if row.get("grid_edge") else "", "" if row.get("learned", True) else " NOT LEARNED"]
    return "".join(parts)


def scope(rows: pd.DataFrame) -> str:
    """What a verdict covers: base models, tasks, budgets, test items and seeds of the rows it rests on."""
    if rows is None or rows.empty:
        return ""
    def values(col: str) -> str:
        if col not in rows:
            return "?"
        return ", ".join(sorted({str(x) for x in rows[col].dropna() if str(x) not in ("", "nan")})) or "?"
    items = values("n_items") if "n_items" in rows and rows["n_items"].notna().any() else values("test_items")
    items = ", ".join(str(int(float(x))) if x.replace(".", "").isdigit() else x for x in items.split(", "))
    return (f"models {values('model')}; tasks {values('task')}; budgets {values('budget')}; "
            f"test items {items}; seeds {values('seeds_reported') if 'seeds_reported' in rows else values('n_seeds')}")


def learned(rows: pd.DataFrame) -> pd.Series:
    return rows["learned"].fillna(False).astype(bool) if "learned" in rows else pd.Series(True, index=rows.index)


# ---- power -----------------------------------------------------------------------------------------------------

def gain_pct(m: Any, full: Any, floor: Any) -> Any:
    return 100 * boot.gain_ratio(m, full, floor)


def plan_gain(ev: Evidence, row: pd.Series, lines: Iterable[float]) -> str:
    """The runs that would put row's gain-retention interval clear of the nearest of `lines`."""
    distance = min(abs(row["gain_mean"] - x) for x in lines)
    return _plan(ev, row, lambda s: s.comparison(row["cell"], row["variant"], row["ref_variant"]), gain_pct,
                 ("m", "full", "floor"), distance, f"{row['task']}/{row['model']} {row['label']} (gain retention)")


def plan_learned(ev: Evidence, row: pd.Series) -> str:
    """The runs that would show whether full FT clears the floor in row's cell."""
    return _plan(ev, row, lambda s: s.comparison(row["cell"], row["variant"], row["ref_variant"]),
                 lambda m, f, l: f - l, ("m", "full", "floor"), abs(row["full_gain_mean"]),
                 f"{row['task']}/{row['model']} full FT vs floor {row.get('floor_name')}")


def plan_difference(ev: Evidence, a: pd.Series, b: pd.Series, diff: float) -> str:
    return _plan(ev, a, lambda s: {"a": s.arms[(a["cell"], a["variant"])], "b": s.arms[(b["cell"], b["variant"])]},
                 lambda x, y: x - y, ("a", "b"), abs(diff), f"{a['task']}/{a['model']} {a['label']} - {b['label']}")


def _plan(ev: Evidence, row: pd.Series, arms_of: Callable[[Any], dict[str, boot.Arm]], fn: Callable[..., Any],
          names: tuple[str, ...], distance: float, what: str) -> str:
    if ev.study is None or pd.isna(row.get("ref_variant", "x")):
        return f"{what}: no arms to plan from"
    try:
        arms = arms_of(ev.study)
    except KeyError:
        return f"{what}: no arms to plan from"
    p = boot.power(arms, fn, names, distance)
    return f"{what}: {p.describe()}"


# ---- shared rules ---------------------------------------------------------------------------------------------

def usable(v: Verdict, ev: Evidence, rows: pd.DataFrame) -> pd.DataFrame:
    """The rows a verdict may rest on: learned cells with an interval. Not-learned rows go into the evidence (and
    the plan) and decide nothing; when nothing else is left the verdict is `not learned`."""
    rows = rows[rows["gain_mean"].notna()]
    dead = rows[~learned(rows)]
    for _, r in dead.iterrows():
        v.evidence.append(fmt_gain(r))
        if "full_gain_mean" in r and not pd.isna(r.get("full_gain_mean")):
            v.plan.append(plan_learned(ev, r))
    live = rows[learned(rows) & rows["gain_low"].notna()]
    if live.empty and not dead.empty:
        v.verdict = NOT_LEARNED
        v.scope = scope(dead)
    return live


def gain_estimate(live: pd.DataFrame) -> str:
    """The headline of a gain-retention verdict: one row's mean with its 95% interval, or the range of several
    rows' means with the widest bounds among them."""
    if len(live) == 1:
        r = live.iloc[0]
        return f"gain retention {r['gain_mean']:.1f}% [{r['gain_low']:.1f}, {r['gain_high']:.1f}]"
    return (f"gain retention {live['gain_mean'].min():.1f}-{live['gain_mean'].max():.1f}% over {len(live)} rows "
            f"(95% bounds from {live['gain_low'].min():.1f} to {live['gain_high'].max():.1f})")


def threshold_rule(v: Verdict, ev: Evidence, rows: pd.DataFrame, line: float, *, every: bool = True) -> Verdict:
    """Supported when the lower bound of gain retention's interval is >= `line` in every learned row (or,
    `every=False`, in a majority); refuted when an upper bound is < `line` (a majority); otherwise inconclusive."""
    live = usable(v, ev, rows)
    if live.empty:
        return v
    v.evidence = [fmt_gain(r) for _, r in live.iterrows()] + v.evidence
    v.estimate = gain_estimate(live)
    above, below = (live["gain_low"] >= line), (live["gain_high"] < line)
    if every:
        v.verdict = REFUTED if below.any() else SUPPORTED if above.all() else INCONCLUSIVE
    else:
        half = len(live) / 2
        v.verdict = SUPPORTED if above.sum() > half else REFUTED if below.sum() > half else INCONCLUSIVE
    v.scope = scope(live)
    if v.verdict == INCONCLUSIVE:
        v.plan += [plan_gain(ev, r, [line]) for _, r in live[~above & ~below].iterrows()]
    return v


def range_outcome(low: float, high: float, lo_line: float, hi_line: float) -> str:
    """One interval against a claimed range [lo_line, hi_line]."""
    if low >= lo_line and high <= hi_line:
        return SUPPORTED
    if low > hi_line:
        return ABOVE_RANGE
    if high < lo_line:
        return REFUTED
    return INCONCLUSIVE


def range_rule(v: Verdict, ev: Evidence, rows: pd.DataFrame, lo_line: float, hi_line: float, *,
               every: bool = True) -> Verdict:
    """The claim names a range: per learned row, `supported` when gain retention's interval lies within it,
    `above the claimed range` when its lower bound is above the range, `refuted` when its upper bound is below
    the range, else inconclusive. Over rows: every row the same outcome (or, `every=False`, a majority)."""
    live = usable(v, ev, rows)
    if live.empty:
        return v
    outcomes = [range_outcome(r["gain_low"], r["gain_high"], lo_line, hi_line) for _, r in live.iterrows()]
    v.evidence = [f"{fmt_gain(r)} -> {o}" for (_, r), o in zip(live.iterrows(), outcomes)] + v.evidence
    v.estimate = f"{gain_estimate(live)} (claimed {lo_line:g}-{hi_line:g}%)"
    counts = {o: outcomes.count(o) for o in set(outcomes)}
    if every:
        v.verdict = REFUTED if REFUTED in counts else outcomes[0] if len(counts) == 1 else INCONCLUSIVE
    else:
        top = max(counts, key=lambda o: counts[o])
        v.verdict = top if counts[top] > len(outcomes) / 2 else INCONCLUSIVE
    v.scope = scope(live)
    if v.verdict == INCONCLUSIVE:
        v.plan += [plan_gain(ev, r, [lo_line, hi_line]) for (_, r), o in zip(live.iterrows(), outcomes)
                   if o == INCONCLUSIVE]
    return v


def difference(ev: Evidence, a: pd.Series, b: pd.Series) -> tuple[float, float, float, str]:
    """Mean test-score difference a - b of two variants of one cell (reported seeds): hierarchical bootstrap,
    paired on shared seeds and items (analysis.gain.Study.difference); without the study's arms, a seeds-only
    bootstrap of the runs' scores (paired by seed when both ran the same seeds)."""
    if ev.study is not None:
        return ev.study.difference(a["cell"], a["variant"], b["variant"])
    def arm(row: pd.Series) -> boot.Arm:
        runs = ev.runs[(ev.runs["cell"] == row["cell"]) & (ev.runs["variant"] == row["variant"])]
        seeds = tuple(int(s) for s in runs["seed"]) if "seed" in runs else tuple(range(len(runs)))
        return boot.Arm("score", seeds, runs["score"].to_numpy(float))
    res = boot.resample({"a": arm(a), "b": arm(b)})
    return (*boot.estimate(res, lambda x, y: x - y, "a", "b"), res.how)


def difference_estimate(diffs: list[tuple[float, float, float]], metric: str) -> str:
    """The headline of a paired verdict: one difference with its 95% interval, or the range of several with how
    many lie beyond zero either way."""
    if len(diffs) == 1:
        d, lo, hi = diffs[0]
        return f"{d:+.4f} [{lo:+.4f}, {hi:+.4f}] {metric}"
    above, below = sum(lo > 0 for _, lo, _ in diffs), sum(hi < 0 for _, _, hi in diffs)
    return (f"{len(diffs)} comparisons, {min(d for d, _, _ in diffs):+.4f} to {max(d for d, _, _ in diffs):+.4f} "
            f"{metric}: {above} above 0 and {below} below 0 beyond the 95% interval")


def paired_rule(v: Verdict, ev: Evidence, pairs: list[tuple[pd.Series, pd.Series]], *, consistent: bool) -> Verdict:
    """Supported when a - b > 0 beyond its interval in every pair (`consistent`) or in some pair with none
    against; refuted when some pair has a - b < 0 beyond its interval (or, not `consistent`, none favours a and
    every interval excludes a gain); otherwise inconclusive. Pairs in cells that are not learned decide nothing."""
    live = [(a, b) for a, b in pairs if bool(a.get("learned", True))]
    for a, _ in pairs:
        if not bool(a.get("learned", True)):
            v.evidence.append(f"{a['task']}/{a['model']}: not learned (full FT does not clear the floor): no verdict")
    if not live:
        v.verdict = NOT_LEARNED if pairs else v.verdict
        return v
    lows, highs, diffs = [], [], []
    for a, b in live:
        diff, low, high, how = difference(ev, a, b)
        lows.append(low)
        highs.append(high)
        diffs.append((diff, low, high))
        v.evidence.append(f"{a['task']}/{a['model']} {a['label']} - {b['label']}: {diff:+.4f} [{low:+.4f}, {high:+.4f}] "
                          f"({how})")
        if not (low > 0 or high < 0):
            v.plan.append(plan_difference(ev, a, b, diff))
    v.estimate = difference_estimate(diffs, live[0][0]["primary_metric"])
    if any(h < 0 for h in highs):
        v.verdict = REFUTED
    elif all(lo > 0 for lo in lows) or (not consistent and any(lo > 0 for lo in lows)):
        v.verdict = SUPPORTED
    else:
        v.verdict = INCONCLUSIVE
    v.scope = scope(pd.DataFrame([a for a, _ in live] + [b for _, b in live]))
    if v.verdict != INCONCLUSIVE:
        v.plan = []
    return v


def pairs_of(fair: pd.DataFrame, a: Callable[[pd.Series], bool], b: Callable[[pd.Series], bool],
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

