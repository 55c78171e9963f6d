"""Would successive halving have picked the same learning rate as the full search, and had the budgets
converged? Replayed on committed sweeps' validation curves.

    python -m analysis.halving_check results/study [--out results/study/budget/halving_check.md]

reads the run folders under `<root>/fair-*` (`--pattern`): the fair sweeps, whose searches share one protocol.

Per variant (cell, method, rank, targets) the seed-0 search runs (`lr_protocol: two-phase-search`) are replayed
through harness/halving.py: rungs go where every run has a `val_curve` point, and the end-of-training validation
score stands in at the budget's step. The full search's rate is analysis.tables.selection (harness/selection.py
select_lr over the ok runs). The convergence rule (harness/budget.py) is applied to every seed's curve at the
selected rate, with the 95% Student-t half-width of the variant's validation score over those seeds.
"""

from __future__ import annotations

import argparse
import math
import os
import sys
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd
from scipy import stats

from analysis.runs import load_folders
from analysis.tables import selection
from harness.budget import TAIL, curve_points, has_flattened
from harness.exits import error
from harness.errors import HarnessError
from harness.halving import plan_rungs, simulate, total_cost
from harness.sweep_plan import SEARCH_PROTOCOLS

SEARCH = SEARCH_PROTOCOLS  # the search runs: on seed 0 (two-phase) or on a held-out selection seed
ETA = 2
VERDICT = {True: "flat", False: "still rising", None: "n/a"}


def _rate(x: float | None) -> str:
    return "—" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{x:g}"


def _search_runs(df: pd.DataFrame) -> pd.DataFrame:
    runs = df[df["lr_protocol"].isin(SEARCH) & df["lr"].notna() & df["status"].isin(["ok", "collapsed"])]
    return runs[runs["seed"].eq(0)]


def halving_rows(df: pd.DataFrame, final_margin: float = 0.0) -> list[dict]:
    """One row per searched variant: the full search's rate, halving's, whether they agree and the cost.
    `final_margin`: the near ties at the last rung run to the budget (harness/halving.py)."""
    sel = selection(df).set_index(["cell", "variant"])
    rows = []
    for (cell, variant), part in _search_runs(df).groupby(["cell", "variant"], sort=False):
        first = part.iloc[0]
        full = sel.loc[(cell, variant)] if (cell, variant) in sel.index else None
        chosen = full["selected_lr"] if full is not None else math.nan
        means = full["val_by_lr"] if full is not None else {}
        row = {"task": first["task"], "variant": first["label"], "n_rates": part["lr"].nunique(), "full": chosen,
               "full_tied": sorted(r for r, m in means.items() if m == means.get(chosen)) if len(means) > 1 else []}
        budget = int(part["train_steps"].max())
        curves = {float(r["lr"]): dict(curve_points(r["val_curve"])) for _, r in part.iterrows()}
        finals = {float(r["lr"]): float(r["val_score"]) for _, r in part.iterrows() if pd.notna(r["val_score"])}
        row["ideal_cost"] = total_cost(plan_rungs(len(curves), budget, ETA), budget, len(curves))
        if not all(curves.values()):
            rows.append(row | {"note": "no val_curve (train.eval_subset 0): halving cannot be replayed"})
            continue
        result = simulate(curves, budget, ETA, final_scores=finals, final_margin=final_margin)
        rungs = "; ".join(f"step {o.rung.step}/{budget}: {o.rung.n_in}→{o.rung.n_keep} "
                          f"({', '.join(f'{_rate(r)} {v:.3f}' for r, v in o.scores.items())})"
                          + (f" tie across the cut: {', '.join(map(_rate, o.tie))}" if o.tie else "")
                          for o in result.rungs)
        tie = len(result.tied) > 1
        agree = "yes" if result.chosen == row["full"] else ("tie" if row["full"] in result.tied else "no")
        regret = means.get(result.chosen, math.nan) - means.get(chosen, math.nan) if means else math.nan
        collapsed = "a collapsed run among the candidates" if part["status"].eq("collapsed").any() else ""
        rows.append(row | {"halving": result.chosen, "tied": result.tied if tie else [], "agree": agree,
                           "regret": regret, "cost": result.cost, "rungs": rungs, "note": collapsed})
    return rows


def _half_width(values: np.ndarray) -> float:
    """95% Student-t half-width of a mean over seeds (NaN under two seeds)."""
    if len(values) < 2:
        return math.nan
    return float(stats.t.ppf(0.975, len(values) - 1) * values.std(ddof=1) / math.sqrt(len(values)))


def _count_flat(verdicts: list[bool | None]) -> str:
    """"k/n": k of the n seeds whose curve could tell are flat ("—" when none could)."""
    decided = [v for v in verdicts if v is not None]
    return f"{sum(decided)}/{len(decided)}" if decided else "—"


def _mean_curve(curves: list[list[tuple[int, float]]]) -> list[tuple[int, float]]:
    """The seeds' curves averaged at the steps they all have."""
    common = set.intersection(*(set(dict(c)) for c in curves)) if curves else set()
    return [(s, float(np.mean([dict(c)[s] for c in curves]))) for s in sorted(common)]


def flatness_rows(df: pd.DataFrame) -> tuple[list[dict], list[dict]]:
    """(per variant, per seed) verdicts of the convergence rule on the curves at each variant's selected rate:
    the seeds' mean curve, then every seed's own."""
    sel = selection(df).set_index(["cell", "variant"])["selected_lr"]
    ok = df[df["status"].eq("ok")]
    variants, seeds = [], []
    for (cell, variant), part in ok.groupby(["cell", "variant"], sort=False):
        lr = sel.get((cell, variant), math.nan)
        at = part[part["lr"].eq(lr)].sort_values("seed")
        half = _half_width(at["val_score"].dropna().to_numpy(float))
        budget = int(at["train_steps"].max())
        curves = [curve_points(c) for c in at["val_curve"]]
        base = {"task": at.iloc[0]["task"], "variant": at.iloc[0]["label"], "lr": lr, "budget": budget,
                "half_width": half, "n_seeds": len(at)}
        if math.isnan(half):
            variants.append(base | {"verdict": "n/a", "note": "fewer than two seeds at the selected rate"})
            continue
        verdicts = []
        for (_, run), points in zip(at.iterrows(), curves):
            flat = has_flattened(points, half, budget_steps=int(run["train_steps"]))
            verdicts.append(flat.flattened)
            seeds.append(base | {"seed": int(run["seed"]), "gain": flat.gain, "verdict": VERDICT[flat.flattened],
                                 "curve": " ".join(f"{s}:{v:.3f}" for s, v in points), "note": flat.reason})
        # the mean curve over the reporting seeds when two or more ran: a search run's denser curve (halving's
        # rungs) shares few steps with theirs (sweep.report_eval_every)
        reporting = [c for c, p in zip(curves, at["lr_protocol"]) if p not in SEARCH]
        mean_curve = _mean_curve(reporting if len(reporting) >= 2 else curves)
        mean = has_flattened(mean_curve, half, budget_steps=budget)
        variants.append(base | {"gain": mean.gain, "verdict": VERDICT[mean.flattened],
                                "curve": " ".join(f"{s}:{v:.3f}" for s, v in mean_curve),
                                "seeds_flat": _count_flat(verdicts),
                                "note": mean.reason})
    return variants, seeds


def _num(x: float | None, fmt: str = ".3f") -> str:
    return "—" if x is None or (isinstance(x, float) and math.isnan(x)) else format(x, fmt)


def _ties(rates: list[float]) -> str:
    return f" (tie: {', '.join(map(_rate, rates))})" if len(rates) > 1 else ""


HALVING_INTRO = (
    "*cost*: the search's training steps in full-budget runs, with the rungs where these curves have points; "
    "*ideal*: the same search with validation scored at every step (rungs at 1/8, 1/4, ... of the budget). A tie "
    "lists every rate tied for the win (both rules pick the smaller). *Δ val*: the full search's validation score "
    "of halving's rate minus that of its own (what a disagreement costs). *rungs*: each comparison's step, runs in "
    "and kept, and every rate's score there (on the curve's validation subset; at the budget's step on the whole "
    "validation split, as the full search).")
FLAT_INTRO = (
    f"Rule (harness/budget.py): flat when the last {TAIL:.0%} of training gains less than the half-width: the "
    f"score at the end minus the score interpolated at {1 - TAIL:.0%} of the budget, both on the curve's "
    "validation subset. Half-width: 95% Student-t over the variant's seeds' end-of-training validation scores at "
    "its selected rate. Per variant the verdict is on the seeds' mean curve (the reporting seeds' when two or more "
    "ran); *seeds flat* counts every seed's own.")


def markdown(halving: list[dict], variants: list[dict], seeds: list[dict], root: str, final_margin: float = 0.0) -> str:
    margin = f" --final-margin {final_margin:g}" if final_margin else ""
    lines = [f"# Successive halving and budget convergence, replayed on `{root}`", "",
             f"Generated by `python -m analysis.halving_check {root.rsplit('/', 1)[0]}{margin}` (eta {ETA}; "
             "harness/halving.py, harness/budget.py)."
             + (f" At the last rung every rate within {final_margin:g} of the leader runs to the budget and the "
                "end-of-training validation score selects (`sweep.lr_halving_final_margin`)." if final_margin else ""),
             "", "## Halving against the full search", "", HALVING_INTRO, "",
             "| task | variant | rates | full search | halving | agree | Δ val | cost | ideal | rungs | note |",
             "|---|---|---:|---:|---:|---|---:|---:|---:|---|---|"]
    for r in halving:
        lines.append(f"| {r['task']} | {r['variant']} | {r['n_rates']} | {_rate(r['full'])}{_ties(r['full_tied'])} | "
                     f"{_rate(r.get('halving'))}{_ties(r.get('tied', []))} | {r.get('agree', '—')} | "
                     f"{_num(r.get('regret'), '+.3f')} | {_num(r.get('cost'), '.2f')} | "
                     f"{_num(r['ideal_cost'], '.2f')} | "
                     f"{r.get('rungs', '—')} | {r.get('note', '')} |")
    replayed = [r for r in halving if "agree" in r]
    agreed = sum(r["agree"] != "no" for r in replayed)
    lines += ["", f"Agreement: {agreed} of {len(replayed)} replayed variants"
              + (f"; mean cost {np.mean([r['cost'] for r in replayed]):.2f} full runs "
                 f"(ideal {np.mean([r['ideal_cost'] for r in replayed]):.2f})" if replayed else
                 " (a sweep searched by halving itself, `sweep.lr_halving`, pauses most rates at a rung: it has no "
                 "full search to replay against)") + ".", "",
              "## Has the budget converged?", "", FLAT_INTRO, "",
              "| task | variant | lr | budget | mean curve (step:score) | gain | half-width | verdict | seeds flat "
              "| note |",
              "|---|---|---:|---:|---|---:|---:|---|---|---|"]
    for r in variants:
        lines.append(f"| {r['task']} | {r['variant']} | {_rate(r['lr'])} | {r['budget']} | {r.get('curve', '')} | "
                     f"{_num(r.get('gain'), '+.3f')} | {_num(r['half_width'])} | {r['verdict']} | "
                     f"{r.get('seeds_flat', '—')} | {r.get('note', '')} |")
    lines += ["", "### Per seed", "", "| task | variant | lr | seed | curve (step:score) | gain | verdict | note |",
              "|---|---|---:|---:|---|---:|---|---|"]
    for r in seeds:
        lines.append(f"| {r['task']} | {r['variant']} | {_rate(r['lr'])} | {r['seed']} | {r['curve']} | "
                     f"{_num(r.get('gain'), '+.3f')} | {r['verdict']} | {r.get('note', '')} |")
    return "\n".join(lines) + "\n"


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m analysis.halving_check", description=__doc__.splitlines()[0])
    parser.add_argument("root", type=Path, help="a folder of run folders, e.g. results/study")
    parser.add_argument("--pattern", default="fair-*", help="which sweep folders under root (default: fair-*)")
    parser.add_argument("--out", type=Path, help="also write the markdown here")
    parser.add_argument("--final-margin", type=float, default=0.0,
                        help="replay with sweep.lr_halving_final_margin (near ties at the last rung run to the budget)")
    args = parser.parse_args(argv)
    if not args.final_margin >= 0:
        return error(f"--final-margin {args.final_margin}: give a score difference >= 0 (e.g. 0.04)")
    folders = sorted(p for p in args.root.glob(args.pattern) if p.is_dir())
    if not folders:
        return error(f"no folder matches {args.root / args.pattern}; point root at the study (e.g. results/study)")
    try:
        df = load_folders(folders)
    except HarnessError as err:
        return error(err)
    text = markdown(halving_rows(df, args.final_margin), *flatness_rows(df), str(args.root / args.pattern),
                    args.final_margin)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        tmp = args.out.with_name(args.out.name + ".tmp")
        tmp.write_text(text)
        os.replace(tmp, args.out)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
