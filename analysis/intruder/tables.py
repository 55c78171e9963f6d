"""Tables of the intruder analysis: per matrix, per run, per label over seeds, the normalised-k counts and the
correlations with forgetting and score. Inputs are a run's record (`Run` of analysis/intruder/report.py) and its arrays
(analysis/intruder/svd.py `analyse_pairs`)."""

from __future__ import annotations

import re
from collections import defaultdict
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd
from scipy.stats import spearmanr

from analysis.intruder.svd import effective_rank, intruder_counts

if TYPE_CHECKING:
    from harness.runfolder import RunFolder as Run

K_FRACTIONS = (0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0)  # the paper's appendix: k as a share of the matrix's width
LAYER_RE = re.compile(r"\.(?:layers|layer|h|blocks)\.(\d+)\.(.+)$")


def scalar_value(value: Any) -> float:
    """A number from a record field that may be missing, a number, or a dict holding one."""
    if isinstance(value, dict):
        value = next((value[k] for k in ("forgetting", "delta", "value", "mean") if k in value), None)
    return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else float("nan")


def matrix_table(run: Run, arrays: dict[str, np.ndarray], k: int, epsilon: float,
                 epsilons: Sequence[float], compared: set[str] | None) -> pd.DataFrame:
    """One row per matrix: where it sits, its intruder counts, and how large and how spread its update is."""
    modules = [str(m) for m in arrays["modules"]]
    where = [LAYER_RE.search(m) for m in modules]
    maxcos, update_sv = arrays["maxcos"], arrays["update_sv"]
    update_fro = np.sqrt(np.nansum(update_sv.astype(np.float64) ** 2, axis=1))
    res = run.result
    return pd.DataFrame({
        "run_id": res["run_id"], "label": run.label, "model": res["model"], "method": res["method"], "r": res.get("r"),
        "alpha": res.get("alpha"), "seed": res.get("seed"), "module": modules,
        "layer": [int(m.group(1)) if m else -1 for m in where], "kind": [m.group(2) if m else n for m, n in zip(where, modules)],
        "rows": arrays["rows"], "cols": arrays["cols"],
        "compared": [compared is None or m in compared for m in modules],
        "intruders": intruder_counts(maxcos, k, epsilon),
        **{f"eps_{e:g}": intruder_counts(maxcos, k, e) for e in epsilons},
        "min_maxcos_topk": np.nanmin(maxcos[:, :k], axis=1),
        "update_erank": [effective_rank(s) for s in update_sv], "update_fro": update_fro,
        "update_top_sv": update_sv[:, 0], "rel_update": update_fro / np.maximum(arrays["w0_fro"], 1e-30),
    })


def comparable_modules(runs: list[Run], arrays: list[dict[str, np.ndarray]]) -> dict[str, set[str]]:
    """Per base model, the matrices its LoRA-family runs changed: full FT's totals count these only."""
    sets: dict[str, set[str]] = defaultdict(set)
    for run, arr in zip(runs, arrays):
        if run.result["saved_to"] == "adapter":
            sets[run.result["model"]] |= {str(m) for m in arr["modules"]}
    return sets


def correlations(summary: pd.DataFrame) -> dict[str, Any]:
    """Spearman's rho of each run's model-total intruder count against its own forgetting and its own task score,
    per base model (the forgetting probes of an encoder and a causal LM are on different scales). The top-level
    `forgetting` / `score` entries are those of the only model, or None when several are mixed."""
    by_model: dict[str, dict[str, Any]] = {}
    if {"label", "seed"} <= set(summary.columns):  # the same training config twice is one observation
        summary = summary.drop_duplicates(["label", "seed"])
    for model, part in summary.groupby("model", sort=True):
        found = {}
        for other in ("forgetting", "score"):
            rows = part[["intruders", other]].astype(float).dropna()
            if len(rows) < 3 or rows["intruders"].nunique() < 2 or rows[other].nunique() < 2:
                found[other] = {"rho": None, "p": None, "n": len(rows), "note": "needs >= 3 runs with varying values"}
                continue
            rho, p = spearmanr(rows["intruders"], rows[other])
            found[other] = {"rho": float(rho), "p": float(p), "n": len(rows)}
        by_model[str(model)] = found
    if len(by_model) == 1:
        return {**next(iter(by_model.values())), "by_model": by_model}
    several = {"rho": None, "p": None, "n": len(summary), "note": "several base models: see by_model"}
    return {"forgetting": several, "score": dict(several), "by_model": by_model}


def group_table(summary: pd.DataFrame, epsilons: Sequence[float]) -> pd.DataFrame:
    """One row per label (method, rank, alpha, learning rate): means and 95% t-intervals over its seeds. Runs at
    different learning rates are different rows, never pooled as if they were seeds."""
    from analysis.tables import t_interval

    rows = []
    for label, part in summary.groupby("label", sort=False):
        if "seed" in part:  # one training config reached twice (e.g. by two sweeps) is one seed
            part = part.drop_duplicates("seed")
        first = part.iloc[0]
        row = {"label": label, "model": first["model"], "method": first["method"], "r": first["r"],
               "alpha": first["alpha"], "lr": first["lr"], "n_seeds": len(part)}
        for col in ("intruders", *[f"eps_{e:g}" for e in epsilons], "rel_update_mean", "score", "val_score",
                    "forgetting"):
            mean, low, high = t_interval(part[col].astype(float))
            row |= {f"{col}_mean": mean, f"{col}_low": low, f"{col}_high": high}
        rows.append(row)
    return pd.DataFrame(rows)


def k_fraction_counts(arrays: dict[str, np.ndarray], used: np.ndarray, epsilon: float,
                      fractions: Sequence[float] = K_FRACTIONS) -> dict[float, int]:
    """Model-total intruders when each matrix tests the top ceil(f x width) vectors (the paper's normalised k)."""
    widths = np.minimum(arrays["rows"], arrays["cols"])[used]
    maxcos = arrays["maxcos"][used]
    out = {}
    for f in fractions:
        ks = np.maximum(1, np.ceil(f * widths - 1e-9)).astype(int)
        out[f] = int(sum((row[:k] < epsilon).sum() for row, k in zip(maxcos, ks)))
    return out


def norm_matched(summary: pd.DataFrame, count: str = "intruders", n_bins: int = 3) -> pd.DataFrame:
    """Rank vs step size: LoRA runs binned by their relative update norm (log-spaced bins over the observed
    range), and per bin and rank the runs, their mean count and mean norm. Within a bin the update size is about
    the same, so a count that still falls with rank is the rank's doing, not the step's."""
    if {"label", "seed"} <= set(summary.columns):  # one training config reached twice is one run
        summary = summary.drop_duplicates(["label", "seed"])
    lora = summary[summary["method"].isin(["lora", "rslora", "dora"]) & summary["rel_update_mean"].gt(0)].copy()
    if lora.empty or lora["r"].nunique() < 2:
        return pd.DataFrame(columns=["bin", "norm_low", "norm_high", "r", "n_runs", f"{count}_mean", "rel_update_mean", "labels"])
    logs = np.log(lora["rel_update_mean"].astype(float))
    edges = np.linspace(logs.min(), logs.max() + 1e-9, n_bins + 1)
    lora["bin"] = np.clip(np.searchsorted(edges, logs, side="right") - 1, 0, n_bins - 1)
    rows = []
    for (b, r), part in lora.groupby(["bin", "r"], sort=True):
        rows.append({"bin": int(b), "norm_low": float(np.exp(edges[b])), "norm_high": float(np.exp(edges[b + 1])),
                     "r": int(r), "n_runs": len(part), f"{count}_mean": float(part[count].mean()),
                     "rel_update_mean": float(part["rel_update_mean"].mean()),
                     "labels": "; ".join(sorted(set(part["label"])))})
    return pd.DataFrame(rows)
