"""The records as claims 16-21 read them (analysis/claims/rules_2025.py and rules_2025_tradeoffs.py): the ok runs
with every column the rules use, each variant at its selected rate, batch size and training rows recovered from
the record, and how a claim's parts combine into one verdict."""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import pandas as pd

from analysis import bootstrap as boot
from analysis.claims import stats_2025 as st
from analysis.claims.verdicts import INCONCLUSIVE, REFUTED, SUPPORTED, Evidence
from harness.results import DONE_STATUSES

COLUMNS = ("cell", "variant", "lr_variant", "task", "model", "method", "r", "alpha", "targets", "seed", "lr", "score",
           "val_score", "base_score", "forgetting", "params_trainable", "train_steps", "train_examples",
           "train_epochs", "budget", "label", "primary_metric", "batch_size")


def combined(states: list[str]) -> str:
    """A claim's verdict from its parts: refuted if any part is, supported if every part is, else inconclusive."""
    return REFUTED if REFUTED in states else SUPPORTED if all(x == SUPPORTED for x in states) else INCONCLUSIVE


def _runs_with(df: pd.DataFrame | None, statuses: tuple[str, ...], scored: str) -> pd.DataFrame:
    """The runs of `statuses` with a `scored` value, every column the rules read present (missing ones empty)."""
    if df is None or df.empty or scored not in df:
        return pd.DataFrame(columns=list(COLUMNS))
    done = df["status"].isin(statuses) if "status" in df else True  # Evidence.runs holds ok runs only
    df = df[done & df[scored].notna()]
    return df.reindex(columns=list(dict.fromkeys([*df.columns, *COLUMNS])))


def ok_runs(df: pd.DataFrame | None) -> pd.DataFrame:
    """The ok runs with a test score."""
    return _runs_with(df, ("ok",), "score")


def finished_runs(df: pd.DataFrame | None) -> pd.DataFrame:
    """The runs trained to the end with a validation score: ok and collapsed. A collapse (one-class predictions,
    loss above its start) is that rate's result, scored like any other: a rate curve without it would end at the
    last rate that did not collapse and call it the grid's edge (claim 16's LoRA r=4 at alpha 32 collapses at
    4e-3 and 8e-3 on classify)."""
    return _runs_with(df, DONE_STATUSES, "val_score")


def batch_size(runs: pd.DataFrame) -> pd.Series:
    """Examples per optimizer step: the configured batch x accumulation (analysis/runs.py `batch_size`), else
    train_examples / train_steps for rows without a config (which a short last batch rounds down)."""
    derived = (runs["train_examples"] / runs["train_steps"]).round()
    return runs["batch_size"].fillna(derived) if "batch_size" in runs else derived


def rows_trained(runs: pd.DataFrame) -> pd.Series:
    """Training rows (task.n_train as used): the record's `train_rows`; records from before that key, examples /
    epochs (which a short last batch or a resumed run can skew, as batch size was: analysis/runs.py)."""
    derived = (runs["train_examples"] / runs["train_epochs"]).round()
    return runs["train_rows"].fillna(derived) if "train_rows" in runs else derived


def fmt_g(x: float, fmt: str = ".3g") -> str:
    return format(x, fmt) if math.isfinite(x) else "nan"


def selected_runs(ev: Evidence) -> pd.DataFrame:
    """Each variant at its validation-selected rate (Evidence.runs), as ok_runs gives them."""
    return ok_runs(ev.runs)


def study_arm(ev: Evidence, cell: str, runs: pd.DataFrame) -> boot.Arm | None:
    """The study's arm of the variant `runs` belong to (its reported seeds, the selection seed left out, and its
    per-item records: analysis.gain.Study); None without a study (the rule tests) or without that variant."""
    if ev.study is None or runs.empty or "variant" not in runs:
        return None
    return ev.study.arms.get((cell, str(runs["variant"].iloc[0])))


def validation_curves(runs: pd.DataFrame, c: st.Curve) -> tuple[np.ndarray, str] | None:
    """Resampled validation curves (B, rates) of one variant for claim 16's fit: every rate's runs (the curve's
    seeds) as an arm of analysis/bootstrap.py, resampled jointly: the same seeds at every rate (paired) and one
    draw of the validation items shared by every rate (all rates are scored on the same items). None when some
    run has no per-item validation records (the caller then resamples seeds only)."""
    from analysis.gain import variant_arm

    if "source" not in runs or runs.empty:
        return None
    runs = runs[runs["seed"].isin(c.seeds)].drop_duplicates(["seed", "lr"])
    metric = str(runs["primary_metric"].dropna().iloc[0]) if runs["primary_metric"].notna().any() else "score"
    arms = {}
    for k, lr in enumerate(sorted(runs["lr"].unique())):
        arm = variant_arm(runs[runs["lr"] == lr], metric, split="validation")
        if arm.stats is None:
            return None
        arms[f"rate{k}"] = arm
    res = boot.resample(arms)
    if res.how.startswith(boot.SEEDS_ONLY):
        return None
    return np.stack([res.draws[f"rate{k}"] for k in range(len(arms))], axis=1), res.how


@dataclass
class ScoreDraws:
    """Bootstrap draws (B,) of each named arm's mean test score in one cell, drawn jointly; `point` the observed
    means; `how` says what was resampled (e.g. "seeds and items, paired")."""

    draws: dict[str, np.ndarray]
    point: dict[str, float]
    how: str
    arms: dict[str, boot.Arm]


def score_draws(ev: Evidence, cell: str, groups: dict[str, pd.DataFrame], floor: bool = False) -> ScoreDraws:
    """Each group's (one variant's runs in `cell`) mean test score, resampled together by analysis/bootstrap.py:
    the study's arms where Evidence has them (the reported seeds, the selection seed left out as in every other
    verdict, and every test item, paired across arms that share them), else the runs' per-seed scores (seeds
    only: Evidence built without a study, as in the rule tests). `floor` adds the cell's floor as arm "floor"
    (its items resampled with the others, so a gain over it is computed per resample)."""
    arms: dict[str, boot.Arm] = {}
    for name, runs in groups.items():
        arm = study_arm(ev, cell, runs)
        if arm is None:
            runs = runs.sort_values("seed")
            arm = boot.Arm("score", tuple(int(s) for s in runs["seed"]), runs["score"].to_numpy(float))
        arms[name] = arm
    if floor:
        study_floor = ev.study.floor_arms.get(cell) if ev.study is not None else None
        arms["floor"] = study_floor or boot.Arm("score", (), np.array([st.floor_of(pd.concat(groups.values()))]))
    res = boot.resample(arms)
    return ScoreDraws(res.draws, res.point, res.how, arms)
