"""Every choice the study makes between measured alternatives, in one place, and the analysis side's choosers.

The rule: a choice reads validation data only; test scores are reported, never chosen on. tests/test_verdicts.py
feeds each chooser records whose test scores disagree with validation (reversed) and checks nothing moves.

Where the search itself ran on one seed (the two-phase protocol: seed 0 at every rate, the other seeds at the
chosen one), that seed's test score carries selection optimism: `selection_optimism` measures it, and reported
means leave the selection seed out when the variant has two or more other seeds at the selected rate
(`reporting_seeds`). With a held-out selection seed (`selection_seed` in the sweep file) the records say which
runs were the search (`lr_protocol: selection-seed-search`): exactly those are left out (`reported_runs`).
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass

import pandas as pd

from harness.sweep_plan import SELECTION_SEED_SEARCH


@dataclass(frozen=True)
class ChoicePoint:
    name: str
    where: str
    reads: str
    tested_by: str


CHOICE_POINTS: tuple[ChoicePoint, ...] = (
    ChoicePoint("learning rate of a variant", "harness/selection.py select_lr (sweeper phase 2 and analysis/tables.py "
                "selection)", "mean validation score over the seeds every rate has; ties: the smaller rate",
                "test_select_lr_ignores_test_scores"),
    ChoicePoint("grid widening (one more rate beyond an edge)", "harness/sweeper.py SearchVariant.widen",
                "select_lr on the search runs' validation scores, then harness/selection.py at_grid_edge",
                "test_widening_ignores_test_scores"),
    ChoicePoint("best variant of a cell (claims 1, 2, 3, 7)", "analysis/choices.py best_by_validation",
                "validation gain retention (val_gain), never test", "test_best_variant_ignores_test_scores"),
    ChoicePoint("floor of a cell (base model, copy, majority)", "analysis/gain.py cell_floor (records: "
                "floor_name, chosen on validation by the harness)", "the floor candidates' validation scores",
                "test_floor_choice_ignores_test_scores"),
    ChoicePoint("reported seeds (selection seed left out)", "analysis/choices.py reporting_seeds",
                "which seeds ran the search (selection_seeds; a record's lr_protocol role), not scores", "test_reporting_seeds"),
    ChoicePoint("merge weights and density (per combine type)", "harness/adapters/merge_select.py choose "
                "(merge --select; grid --grid-weights 0.5,1.0,1.5 x --grid-density 0.2,0.5,0.8)",
                "mean over tasks of validation retention (merged / own adapter, both on validation); ties: the first "
                "grid point; `--eval` without --select keeps fixed --weights / --density and reads no data",
                "(tests/test_merge.py: test_select_chooses_on_validation_only, test_choose_reads_validation_retention_only)"),
    ChoicePoint("AdaLoRA schedule (tinit, where pruning ends) and budget (init_r, target_r)",
                "conf/method/adalora.yaml schedule {tinit: 0.1, end: 0.6}, init_r_factor 1.5; sweeps/study/fair-adalora.yaml",
                "nothing measured: a rule fixed before the runs (pruning done by 60% of the steps; final rank total "
                "= LoRA's); each run records what it kept (params_effective)", "(no data read)"),
    ChoicePoint("training budgets (steps, epochs)", "sweeps/study/*.yaml, fixed before the runs",
                "nothing measured: fixed per sweep file", "(no data read)"),
    ChoicePoint("search rungs (early stopping of rates)", "harness/sweep_plan.py HalvingSearch.cut (lr_halving "
                "sweeps only; otherwise every searched rate trains its full budget)",
                "the val_curve score (train.eval_subset validation rows) at the rung step; ties: the smaller rate",
                "(tests/test_halving.py survivors; tests/test_fair.py test_halving_sweep_resumes_survivors_and_never_selects_a_paused_run)"),
)


def choice_table() -> str:
    """The choice points as a markdown table (the ledger prints it)."""
    lines = ["| choice | where | reads | checked by |", "|---|---|---|---|"]
    lines += [f"| {c.name} | {c.where} | {c.reads} | {c.tested_by} |" for c in CHOICE_POINTS]
    return "\n".join(lines)


def reporting_seeds(seeds_at_rate: Iterable[int], selection_seeds: Iterable[int]) -> tuple[list[int], str]:
    """(seeds whose test scores are reported, why). The seeds that ran the search are left out when at least two
    other seeds ran at the selected rate; otherwise every seed is kept and the row says it includes them."""
    seeds = sorted(set(int(s) for s in seeds_at_rate))
    chosen_on = set(int(s) for s in selection_seeds)
    others = [s for s in seeds if s not in chosen_on]
    if chosen_on and len(others) >= 2 and len(others) < len(seeds):
        return others, f"selection seed {','.join(map(str, sorted(chosen_on & set(seeds))))} left out"
    if chosen_on and not others:
        return seeds, "every seed ran every rate (full grid): no seed outside the selection"
    if chosen_on and len(others) < len(seeds):
        return seeds, "includes the selection seed (fewer than 2 other seeds)"
    return seeds, ""


def reported_runs(runs_at_rate: pd.DataFrame, selection_seeds: Iterable[int]) -> tuple[pd.DataFrame, str]:
    """(a variant's runs at its selected rate whose test scores are reported, why). Runs whose record says it was
    the search on a held-out selection seed are left out, whatever their number; records without that role (older
    sweeps, the two-phase protocol) follow `reporting_seeds`."""
    roles = runs_at_rate["lr_protocol"] if "lr_protocol" in runs_at_rate else pd.Series(dtype=object)
    search = roles.eq(SELECTION_SEED_SEARCH).reindex(runs_at_rate.index, fill_value=False)
    if search.any():
        held_out = ",".join(str(int(s)) for s in sorted(runs_at_rate.loc[search, "seed"].dropna().unique()))
        if search.all():
            return runs_at_rate, f"only the selection seed {held_out} ran at the selected rate: it is reported"
        return runs_at_rate[~search], f"selection seed {held_out} left out (held-out search seed)"
    keep, note = reporting_seeds(runs_at_rate["seed"].dropna(), selection_seeds)
    return runs_at_rate[runs_at_rate["seed"].isin(keep)], note


def best_by_validation(rows: pd.DataFrame, by: str | list[str] = "cell", column: str = "val_gain") -> pd.DataFrame:
    """Per group, the row with the highest validation gain retention (ties: the first in the table's order).
    Test columns are never read."""
    if rows.empty:
        return rows
    ranked = rows.assign(_key=rows[column].astype(float).fillna(-math.inf))
    return ranked.sort_values("_key", ascending=False, kind="stable").groupby(by, sort=False).head(1).drop(columns="_key")


def selection_optimism(runs: pd.DataFrame, selection: pd.DataFrame) -> pd.DataFrame:
    """Per variant at its selected rate: the selection seed's test score minus the mean of the other seeds'
    (positive: the search seed looks better than a fresh seed). `runs`: the ok runs at the selected rates;
    `selection`: analysis.tables.selection's table."""
    rows = []
    for _, sel in selection.iterrows():
        chosen_on = {int(s) for s in str(sel["selection_seeds"]).split(",") if s.strip()}
        part = runs[(runs["cell"] == sel["cell"]) & (runs["variant"] == sel["variant"])]
        mine, others = part[part["seed"].isin(chosen_on)], part[~part["seed"].isin(chosen_on)]
        if mine.empty or others.empty or int(sel["n_lrs"]) < 2:
            continue
        first = part.iloc[0]
        rows.append({"task": first["task"], "model": first["model"], "label": first["label"], "cell": sel["cell"],
                     "variant": sel["variant"], "selected_lr": sel["selected_lr"],
                     "selection_seeds": ",".join(map(str, sorted(chosen_on))), "n_other": len(others),
                     "selection_score": float(mine["score"].mean()), "others_score": float(others["score"].mean()),
                     "optimism": float(mine["score"].mean() - others["score"].mean())})
    return pd.DataFrame(rows, columns=["task", "model", "label", "cell", "variant", "selected_lr", "selection_seeds",
                                       "n_other", "selection_score", "others_score", "optimism"])
