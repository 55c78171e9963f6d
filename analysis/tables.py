"""The numbers of the report: per-variant summaries, quality retention against full fine-tuning, the Pareto
front of score vs peak memory, the memory-and-cost table and the per-task recommendation.

Definitions (also printed in the report):
- A *cell* is one task, model, data fingerprint and task config (split sizes): scores compare only within a cell.
- A *variant* is one effective config minus the seed; its seeds are averaged.
- *Retention* of a variant = its score / the full-FT reference's mean score x 100, one value per seed of the
  variant; the table gives their mean and a 95% t-interval (n = seeds; n=1 has no interval). The reference is
  the full-FT variant of the same cell trained with the same budget (steps, batch, sequence length), else the
  best-scoring full-FT variant of the cell. No full-FT run in the cell, or a reference score <= 0: no retention.
- Only runs with status `ok` count; the others are listed as failures.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import pandas as pd
from scipy import stats

FULL = "full"
GIB, MIB = 2**30, 2**20
CONFIDENCE = 0.95
PROJECTION_MODELS = ("llama-2-7b", "llama-3.1-70b")  # conf/model presets; the seed's "7B" and "70B" rows
KEYS = ["cell", "task", "model", "variant", "label", "method", "r", "targets"]


def ok_runs(df: pd.DataFrame) -> pd.DataFrame:
    return df[df["status"].eq("ok") & df["score"].notna()]


def failures(df: pd.DataFrame) -> pd.DataFrame:
    """Runs that did not finish `ok`, with their reason: shown, never averaged into anything."""
    cols = ["run_id", "task", "model", "label", "seed", "status", "reason"]
    bad = df[~df.index.isin(ok_runs(df).index)][cols].reset_index(drop=True)
    return bad.astype({"seed": "Int64"})


def t_interval(values: np.ndarray | list[float], confidence: float = CONFIDENCE) -> tuple[float, float, float]:
    """(mean, low, high): Student-t interval of the mean over seeds; (mean, nan, nan) for a single seed."""
    x = np.asarray(values, dtype=float)
    x = x[np.isfinite(x)]
    if x.size == 0:
        return math.nan, math.nan, math.nan
    mean = float(x.mean())
    if x.size < 2:
        return mean, math.nan, math.nan
    sem = float(stats.sem(x))
    if sem == 0:
        return mean, mean, mean
    low, high = stats.t.interval(confidence, x.size - 1, loc=mean, scale=sem)
    return mean, float(low), float(high)


def variant_summary(df: pd.DataFrame) -> pd.DataFrame:
    """One row per (cell, variant) of the ok runs: seed count and the mean of every measurement."""
    ok = ok_runs(df)
    if ok.empty:
        return pd.DataFrame(columns=KEYS + ["n", "score", "score_sd"])
    grouped = ok.groupby(KEYS, dropna=False, sort=False)
    out = grouped.agg(
        n=("run_id", "size"), seeds=("seed", lambda s: ",".join(str(int(v)) for v in sorted(s.dropna()))),
        score=("score", "mean"), score_sd=("score", "std"), base_score=("base_score", "mean"),
        primary_metric=("primary_metric", "first"), budget=("budget", "first"), precision=("precision", "first"),
        params_total=("params_total", "mean"), params_trainable=("params_trainable", "mean"),
        trainable_pct=("trainable_pct", "mean"), peak_mem_bytes=("peak_mem_bytes", "mean"),
        mem_kind=("mem_kind", lambda s: "/".join(sorted(set(s.dropna().astype(str))))),
        adapter_bytes=("adapter_bytes", "mean"), train_tokens_per_s=("train_tokens_per_s", "mean"),
        tokens_per_s_sd=("train_tokens_per_s", "std"), train_runtime_s=("train_runtime_s", "mean"),
        forgetting=("forgetting", "mean"),
    ).reset_index()
    out["_order"] = out["method"].ne(FULL)                    # full FT first in each cell, then by method and rank
    out = out.sort_values(["task", "model", "cell", "_order", "method", "r", "targets"], na_position="first")
    return out.drop(columns="_order").reset_index(drop=True)


def _reference(summary: pd.DataFrame, cell: str, budget: str) -> pd.Series | None:
    """The full-FT variant a variant is compared with (same cell; same budget if there is one)."""
    full = summary[(summary["cell"] == cell) & (summary["method"] == FULL)]
    if full.empty:
        return None
    same = full[full["budget"] == budget]
    pool = same if not same.empty else full
    return pool.sort_values("score", ascending=False).iloc[0]


def retention(df: pd.DataFrame) -> pd.DataFrame:
    """Quality retention of every variant against its full-FT reference (percent; mean and t-interval)."""
    ok = ok_runs(df)
    summary = variant_summary(df)
    rows = []
    for _, var in summary.iterrows():
        ref = _reference(summary, var["cell"], var["budget"])
        row = {k: var[k] for k in KEYS} | {"n": int(var["n"]), "seeds": var["seeds"], "score": var["score"],
                                          "primary_metric": var["primary_metric"]}
        if ref is None:
            rows.append(row | {"note": "no full-FT run on this task/model/data"})
            continue
        row |= {"reference": ref["label"], "ref_n": int(ref["n"]), "ref_score": ref["score"]}
        if not ref["score"] > 0:
            rows.append(row | {"note": f"full-FT score is {ref['score']:.3g}: retention undefined"})
            continue
        scores = ok[(ok["cell"] == var["cell"]) & (ok["variant"] == var["variant"])]["score"].to_numpy()
        mean, low, high = t_interval(100.0 * scores / ref["score"])
        note = "reference" if var["variant"] == ref["variant"] else ("n=1, no CI" if len(scores) < 2 else "")
        rows.append(row | {"retention": mean, "ci_low": low, "ci_high": high, "note": note})
    cols = KEYS + ["n", "seeds", "primary_metric", "score", "reference", "ref_n", "ref_score", "retention",
                   "ci_low", "ci_high", "note"]
    return pd.DataFrame(rows, columns=cols)


def format_retention(row: pd.Series) -> str:
    """"97.1% [93.0, 101.2] n=3", "97.1% (n=1, no CI)", or why there is no number."""
    if pd.isna(row.get("retention")):
        return str(row.get("note") or "n/a")
    if pd.isna(row.get("ci_low")):
        return f"{row['retention']:.1f}% (n={int(row['n'])}, no CI)"
    return f"{row['retention']:.1f}% [{row['ci_low']:.1f}, {row['ci_high']:.1f}] n={int(row['n'])}"


def retention_pivot(ret: pd.DataFrame, axis: str) -> pd.DataFrame:
    """Retention by rank (`axis="r"`) or by target group (`axis="targets"`), one column per value."""
    varying = ret[ret["method"] != FULL].copy()
    if varying.empty or varying[axis].isna().all():
        return pd.DataFrame()
    varying = varying[varying[axis].notna()]
    varying["value"] = varying.apply(format_retention, axis=1)
    varying[axis] = varying[axis].map(lambda v: f"r={int(v)}" if axis == "r" else str(v))
    other = "targets" if axis == "r" else "r"
    varying[other] = varying[other].map(lambda v: "-" if pd.isna(v) else (f"r={int(v)}" if other == "r" else str(v)))
    table = varying.pivot_table(index=["task", "model", "cell", "method", other], columns=axis, values="value",
                                aggfunc="first", sort=False)
    if axis == "r":
        table = table[sorted(table.columns, key=lambda c: int(c.split("=")[1]))]
    return table.fillna("").reset_index().rename_axis(columns=None)


def pareto_mask(x: np.ndarray | list[float], y: np.ndarray | list[float]) -> np.ndarray:
    """True where no other point has x <= and y >= with one of them strict (lower memory, higher score win).
    Points with a missing value are never on the front."""
    x, y = np.asarray(x, dtype=float), np.asarray(y, dtype=float)
    valid = np.isfinite(x) & np.isfinite(y)
    on = valid.copy()
    for i in np.flatnonzero(valid):
        dominated = valid & (x <= x[i]) & (y >= y[i]) & ((x < x[i]) | (y > y[i]))
        on[i] = not dominated.any()
    return on


def pareto(summary: pd.DataFrame, x: str = "peak_mem_bytes", y: str = "score") -> pd.DataFrame:
    """`summary` with `on_front`: the Pareto front of score vs peak memory within each task and model."""
    out = summary.copy()
    out["on_front"] = False
    for _, idx in out.groupby(["task", "model", "cell"], sort=False).groups.items():
        part = out.loc[idx]
        out.loc[idx, "on_front"] = pareto_mask(part[x], part[y])
    return out


def cost_table(summary: pd.DataFrame) -> pd.DataFrame:
    """The measured memory-and-cost table: trainable params, peak memory, size on disk, throughput, relative cost
    (training time relative to the full-FT reference of the same cell and budget)."""
    rows = []
    for _, var in summary.iterrows():
        ref = _reference(summary, var["cell"], var["budget"])
        rel = var["train_runtime_s"] / ref["train_runtime_s"] if ref is not None and ref["train_runtime_s"] > 0 else math.nan
        rows.append({
            "task": var["task"], "model": var["model"], "cell": var["cell"], "variant": var["label"], "method": var["method"],
            "n": int(var["n"]), "trainable params": var["params_trainable"], "trainable %": var["trainable_pct"],
            "peak memory (GiB)": var["peak_mem_bytes"] / GIB, "memory kind": var["mem_kind"],
            "on disk (MiB)": var["adapter_bytes"] / MIB, "tokens/s": var["train_tokens_per_s"],
            "train time (s)": var["train_runtime_s"], "relative cost (x full FT)": rel,
        })
    return pd.DataFrame(rows)


def recommendations(ret: pd.DataFrame, summary: pd.DataFrame, threshold: float = 95.0) -> pd.DataFrame:
    """Per task, model and data: the variant whose mean retention reaches `threshold` % at the lowest peak memory.
    Full FT (100% by definition) qualifies, so a task where nothing else reaches the bar recommends full FT."""
    merged = ret.merge(summary[["cell", "variant", "peak_mem_bytes", "mem_kind"]], on=["cell", "variant"], how="left")
    rows = []
    for (task, model, cell), part in merged.groupby(["task", "model", "cell"], sort=False):
        scored = part[part["retention"].notna()]
        if scored.empty:
            why = part["note"].dropna().iloc[0] if part["note"].notna().any() else "no retention"
            rows.append({"task": task, "model": model, "cell": cell, "recommended": "", "note": f"no retention: {why}"})
            continue
        good = scored[(scored["retention"] >= threshold) & scored["peak_mem_bytes"].notna()]
        if good.empty:
            rows.append({"task": task, "model": model, "cell": cell, "recommended": "", "note": "no peak memory recorded"})
            continue
        best = good.sort_values(["peak_mem_bytes", "retention"], ascending=[True, False]).iloc[0]
        full = scored[scored["method"] == FULL]
        full_mem = full["peak_mem_bytes"].min() if not full.empty else math.nan
        rows.append({
            "task": task, "model": model, "cell": cell, "recommended": best["label"], "retention": format_retention(best),
            "peak memory (GiB)": best["peak_mem_bytes"] / GIB, "memory kind": best["mem_kind"],
            "memory vs full FT": best["peak_mem_bytes"] / full_mem if full_mem > 0 else math.nan,
            "qualifying variants": f"{len(good)} of {len(scored)}",
            "note": "nothing else reaches the bar" if best["method"] == FULL else "",
        })
    return pd.DataFrame(rows)


def projection(summary: pd.DataFrame, models: tuple[str, ...] = PROJECTION_MODELS) -> tuple[pd.DataFrame, str]:
    """Predicted peak GPU memory and saved size of each measured variant on large models, from `harness.estimate`
    (same method, rank, targets and precision; the estimator's default batch and sequence length). Returns
    (table, note); an empty table and a note saying why when the estimator is unavailable."""
    try:
        from harness.estimate import estimate_overrides  # noqa: PLC0415 - optional: the report works without it
    except ImportError as err:
        return pd.DataFrame(), f"no projection: harness.estimate is not available ({err})"
    from harness.config import CONF_DIR  # noqa: PLC0415

    models = tuple(m for m in models if (CONF_DIR / "model" / f"{m}.yaml").exists())
    if not models or summary.empty:
        return pd.DataFrame(), "no projection: no large-model preset in conf/model" if not models else "no runs"
    rows, errors, shape = [], [], None
    for _, var in summary.drop_duplicates("label").iterrows():
        overrides = [f"method={var['method']}"]
        overrides += [] if pd.isna(var["r"]) else [f"r={int(var['r'])}"]
        overrides += [] if pd.isna(var["targets"]) else [f"targets={var['targets']}"]
        overrides += [f"train.precision={var['precision']}"] if isinstance(var.get("precision"), str) else []
        row: dict[str, Any] = {"variant": var["label"]}
        for model in models:
            try:
                est = estimate_overrides([f"model={model}", *overrides], device="cuda")
            except Exception as err:  # noqa: BLE001 - a projection must never stop the report
                errors.append(f"{var['label']} on {model}: {type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''}")
                continue
            shape = (est.batch_size, est.seq_len)
            row[f"{model} peak (GiB)"] = est.memory.peak / GIB
            row[f"{model} on disk (GiB)"] = est.disk_bytes / GIB
        rows.append(row)
    note = ("predicted by harness.estimate for one CUDA GPU: PyTorch's peak allocated memory plus the CUDA context, "
            "with each variant's method, rank, targets and precision"
            + (f", batch {shape[0]} x {shape[1]} tokens (conf/train defaults)" if shape else "")
            + (f"; not projected: {'; '.join(errors[:3])}" if errors else ""))
    return pd.DataFrame(rows), note
