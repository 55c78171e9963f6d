"""The records as claims 16-21 read them (analysis/claims/rules_2025.py and rules_2025_tradeoffs.py): the ok runs
with every column the rules use, each variant at its selected rate, batch size and training rows recovered from
the record, and how a claim's parts combine into one verdict."""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import pandas as pd

from analysis import bootstrap as boot
from analysis.claims.verdicts import INCONCLUSIVE, REFUTED, SUPPORTED, Evidence

COLUMNS = ("cell", "variant", "lr_variant", "task", "model", "method", "r", "alpha", "targets", "seed", "lr", "score",
           "val_score", "base_score", "forgetting", "params_trainable", "train_steps", "train_examples",
           "train_epochs", "budget", "label", "primary_metric", "batch_size")


def combined(states: list[str]) -> str:
    """A claim's verdict from its parts: refuted if any part is, supported if every part is, else inconclusive."""
    return REFUTED if REFUTED in states else SUPPORTED if all(x == SUPPORTED for x in states) else INCONCLUSIVE


def ok_runs(df: pd.DataFrame | None) -> pd.DataFrame:
    """The ok runs with a score, every column the rules read present (missing ones empty)."""
    if df is None or df.empty or "score" not in df:
        return pd.DataFrame(columns=list(COLUMNS))
    ok = df["status"].eq("ok") if "status" in df else True  # Evidence.runs holds ok runs only
    df = df[ok & df["score"].notna()]
    return df.reindex(columns=list(dict.fromkeys([*df.columns, *COLUMNS])))


def batch_size(runs: pd.DataFrame) -> pd.Series:
    """Examples per optimizer step: the configured batch x accumulation (analysis/runs.py `batch_size`), else
    train_examples / train_steps for rows without a config (which a short last batch rounds down)."""
    derived = (runs["train_examples"] / runs["train_steps"]).round()
    return runs["batch_size"].fillna(derived) if "batch_size" in runs else derived


def rows_trained(runs: pd.DataFrame) -> pd.Series:
    """Training rows (task.n_train as used), from examples / epochs; a `train_rows` column would replace this."""
    return (runs["train_examples"] / runs["train_epochs"]).round()


def fmt_g(x: float, fmt: str = ".3g") -> str:
    return format(x, fmt) if math.isfinite(x) else "nan"


def selected_runs(ev: Evidence) -> pd.DataFrame:
    """Each variant at its validation-selected rate (Evidence.runs), as ok_runs gives them."""
    return ok_runs(ev.runs)


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
    study = ev.study
    arms: dict[str, boot.Arm] = {}
    for name, runs in groups.items():
        variant = str(runs["variant"].iloc[0]) if "variant" in runs and len(runs) else None
        if study is not None and (cell, variant) in study.arms:
            arms[name] = study.arms[(cell, variant)]
        else:
            runs = runs.sort_values("seed")
            arms[name] = boot.Arm("score", tuple(int(s) for s in runs["seed"]), runs["score"].to_numpy(float))
    if floor:
        if study is not None and cell in study.floor_arms:
            arms["floor"] = study.floor_arms[cell]
        else:
            base = pd.concat(groups.values())
            value = next((float(base[k].dropna().mean()) for k in ("floor_score", "base_score")
                          if k in base and base[k].notna().any()), math.nan)
            arms["floor"] = boot.Arm("score", (), np.array([value]))
    res = boot.resample(arms)
    return ScoreDraws(res.draws, res.point, res.how, arms)
