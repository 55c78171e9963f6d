"""Claim 11's evidence from an intruder analysis: per-run counts of a group with their exact interval, and a
model's intruders-vs-forgetting rank test (analysis/exact.py does the statistics)."""

from __future__ import annotations

import math
from typing import Any

import pandas as pd

from analysis.exact import count_interval, rank_test


def one_per_config(runs: pd.DataFrame) -> pd.DataFrame:
    """One training config reached by two sweeps is one run."""
    return runs.drop_duplicates(["label", "seed"]) if {"label", "seed"} <= set(runs.columns) else runs


def count_group(summary: pd.DataFrame, group: pd.Series) -> dict[str, Any]:
    """An intruder group's per-run counts (from the summary) with their mean and exact Poisson interval."""
    rows = summary[summary["label"] == group["label"]]
    if "model" in summary.columns and "model" in group.index:
        rows = rows[rows["model"] == group["model"]]
    counts = one_per_config(rows)["intruders"].dropna().to_numpy(dtype=float)
    if counts.size == 0:  # a summary without the group's runs: its mean alone, no interval
        mean, low, high = float(group["intruders_mean"]), math.nan, math.nan
    else:
        mean, low, high = count_interval(counts)
    return {"label": group["label"], "mean": mean, "low": low, "high": high, "n": int(counts.size),
            "text": f"{mean:.1f} [{low:.1f}, {high:.1f}] over {counts.size} runs"}


def link_test(link: dict[str, Any]) -> dict[str, Any]:
    """A model's intruders-vs-forgetting test from its runs' pairs; an old link without them keeps its own rho
    and p (scipy's asymptotic p, marked not exact)."""
    pairs = link.get("pairs")
    if pairs:
        return rank_test([a for a, _ in pairs], [b for _, b in pairs])
    value = lambda key: math.nan if link.get(key) is None else float(link[key])  # noqa: E731  (null: too few runs)
    return {"rho": value("rho"), "p": value("p"), "exact": False, "n": link.get("n"), "p_min": 0.0, "needs": None}
