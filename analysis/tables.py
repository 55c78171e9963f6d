"""The numbers of the report: per-variant summaries, quality retention against full fine-tuning, the Pareto
front of score vs peak memory, the memory-and-cost table and the per-task recommendation.

Definitions (also printed in the report):
- A *cell* is one task, model, data fingerprint and task config (split sizes): scores compare only within a cell.
- A *variant* is one effective config minus the seed and the learning rate. Its rate is *selected* on
  validation: the rate with the best mean validation score over the seeds every tried rate has (ties: the
  smaller rate; harness/selection.py, the rule the sweeper uses too). Every number of a variant is taken at
  that rate; a selected rate at either end of the tried ones is flagged `grid_edge`.
- The test score of a variant is the mean over its seeds at the selected rate, with a 95% Student-t interval
  (one seed: no interval). A held-out selection seed (`sweep.selection_seed`) is left out of it where reporting
  seeds ran at that rate.
- *Retention* = the variant's mean test score / the full-FT reference's, in percent, with a 95% Fieller
  interval for the ratio of two independent means (t quantile at min(n) - 1 degrees of freedom; both need two
  or more seeds, and an interval whose denominator is not clearly above zero is reported unbounded). The
  reference is the full-FT variant of the same cell at its own selected rate, trained on the same examples and
  sequence length; when the cell has none with that budget, the closest full-FT variant is used and the row is
  flagged `budget_mismatch`. No full-FT run, or a reference score <= 0: no retention. (This raw retention is the
  per-sweep report's; the claims ledger decides on gain retention against the cell's floor, with bootstrap
  intervals over seeds and items and the selection seed left out: analysis/gain.py.)
- Only runs with status `ok` count; `collapsed` runs (finite but failed) and every other status are listed
  with their reason, never selected or averaged.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import pandas as pd
from scipy import stats

from harness.selection import at_grid_edge, select_lr
from harness.sweep_plan import SELECTION_SEED_SEARCH

FULL = "full"
GIB, MIB = 2**30, 2**20
CONFIDENCE = 0.95
PROJECTION_MODELS = ("llama-2-7b", "llama-3.1-70b")  # conf/model presets: the "7B" and "70B" rows memory tables quote
KEYS = ["cell", "task", "model", "variant", "label", "method", "r", "targets"]
SUMMARY_COLUMNS = ["n", "seeds", "score", "score_sd", "base_score", "primary_metric", "budget", "precision",
                   "params_total", "params_trainable", "trainable_pct", "peak_mem_bytes", "mem_kind", "adapter_bytes",
                   "train_tokens_per_s", "tokens_per_s_sd", "train_runtime_s", "forgetting", "lr", "val_score",
                   "train_examples", "max_seq_len"]


def ok_runs(df: pd.DataFrame) -> pd.DataFrame:
    return df[df["status"].eq("ok") & df["score"].notna()]


def selection(df: pd.DataFrame) -> pd.DataFrame:
    """Per (cell, variant): the rates tried, the validation score per rate, the selected rate and its flags."""
    ok = ok_runs(df)
    rows = []
    for (cell, variant), part in ok.groupby(["cell", "variant"], sort=False):
        collapsed = df[(df["cell"] == cell) & (df["variant"] == variant) & df["status"].eq("collapsed")]
        # successive halving (lr_halving): rates stopped at a rung were tried and lost on validation
        paused = df[(df["cell"] == cell) & (df["variant"] == variant) & df["status"].eq("paused")]
        # a collapsed rate was tried (and failed): it bounds the search like any other
        tried_all = sorted(set(part["lr"].dropna()) | set(collapsed["lr"].dropna()) | set(paused["lr"].dropna()))
        tried = sorted(set(part["lr"].dropna()))
        has_val = part["val_score"].notna()
        if len(tried) <= 1:
            chosen = tried[0] if tried else math.nan
            means = {chosen: float(part["val_score"].mean())} if tried and has_val.any() else {}
            note = "one rate tried" if tried else "no learning rate recorded"
            seeds = sorted(int(x) for x in part["seed"].dropna())
            if len(paused) and tried:  # halving chose on the search seed: that seed is the selection seed
                note, seeds = "successive halving: the other rates stopped at rungs", \
                    sorted({int(x) for x in paused["seed"].dropna()})
        elif not has_val.all():
            chosen, means, seeds, note = math.nan, {}, [], "several rates but no validation score: cannot select"
        else:
            chosen, means, seeds = select_lr(zip(part["lr"], part["seed"].fillna(0).astype(int), part["val_score"]))
            note = ""
        rows.append({"cell": cell, "variant": variant, "lrs_tried": ",".join(f"{x:g}" for x in tried_all),
                     "n_lrs": len(tried_all), "selected_lr": chosen, "val_by_lr": means,
                     "val_score": means.get(chosen, math.nan) if means else math.nan,
                     "selection_seeds": ",".join(map(str, seeds)),
                     "grid_edge": at_grid_edge(chosen if not pd.isna(chosen) else None, tried_all),
                     "collapsed_lrs": ",".join(f"{x:g}" for x in sorted(set(collapsed["lr"].dropna()))),
                     "selection_note": note})
    return pd.DataFrame(rows, columns=["cell", "variant", "lrs_tried", "n_lrs", "selected_lr", "val_by_lr",
                                       "val_score", "selection_seeds", "grid_edge", "collapsed_lrs", "selection_note"])


def at_selected_lr(df: pd.DataFrame, with_search: bool = False) -> pd.DataFrame:
    """The ok runs of every variant at its selected learning rate (what every per-variant number is taken from);
    `with_search` keeps a held-out selection seed's search run beside the reporting seeds (selection optimism)."""
    ok = ok_runs(df)
    sel = selection(df)
    if ok.empty or sel.empty:
        return ok
    merged = ok.merge(sel[["cell", "variant", "selected_lr"]], on=["cell", "variant"], how="left")
    keep = np.isclose(merged["lr"].astype(float), merged["selected_lr"].astype(float), rtol=1e-9, atol=0) | \
        (merged["lr"].isna() & merged["selected_lr"].isna())
    ok = ok[keep.to_numpy()]
    if with_search or "lr_protocol" not in ok.columns:
        return ok
    # a held-out selection seed's search run chose the rate: left out where the variant has reporting seeds at it,
    # as the ledger does (analysis/choices.reported_runs)
    search = ok["lr_protocol"].eq(SELECTION_SEED_SEARCH)
    others = (~search).groupby([ok["cell"], ok["variant"]]).transform("sum")
    return ok[~(search & others.gt(0))]


def failures(df: pd.DataFrame) -> pd.DataFrame:
    """Runs that did not finish `ok`, with their reason: shown, never averaged into anything."""
    cols = ["run_id", "task", "model", "label", "seed", "status", "reason"]
    bad = df[~df.index.isin(ok_runs(df).index) & df["status"].ne("paused")][cols].reset_index(drop=True)  # paused:
    # a successive-halving rate stopped at its rung on purpose, not a failure
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


def fieller_interval(a: np.ndarray | list[float], b: np.ndarray | list[float],
                     confidence: float = CONFIDENCE) -> tuple[float, float, float]:
    """(mean(a) / mean(b), low, high): Fieller's interval for a ratio of two independent means, t quantile at
    min(n_a, n_b) - 1 degrees of freedom. Fewer than two values on either side: no interval (nan, nan); a
    denominator not significantly above zero (g >= 1): an unbounded interval (-inf, inf)."""
    a, b = np.asarray(a, float), np.asarray(b, float)
    a, b = a[np.isfinite(a)], b[np.isfinite(b)]
    if a.size == 0 or b.size == 0 or b.mean() == 0:
        return math.nan, math.nan, math.nan
    ratio = float(a.mean() / b.mean())
    if a.size < 2 or b.size < 2:
        return ratio, math.nan, math.nan
    va, vb = a.var(ddof=1) / a.size, b.var(ddof=1) / b.size
    t = float(stats.t.ppf(0.5 + confidence / 2, min(a.size, b.size) - 1))
    g = t * t * vb / b.mean() ** 2
    if g >= 1:
        return ratio, -math.inf, math.inf
    half = t / abs(b.mean()) * math.sqrt(va * (1 - g) + ratio * ratio * vb)
    return ratio, float((ratio - half) / (1 - g)), float((ratio + half) / (1 - g))


def variant_summary(df: pd.DataFrame) -> pd.DataFrame:
    """One row per (cell, variant) of the ok runs at the variant's selected rate: seed count and the mean of
    every measurement."""
    ok = at_selected_lr(df)
    if ok.empty:
        return pd.DataFrame(columns=KEYS + SUMMARY_COLUMNS)  # every column, so the tables and figures find theirs
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
        forgetting=("forgetting", "mean"), lr=("lr", "first"), val_score=("val_score", "mean"),
        train_examples=("train_examples", "mean"), max_seq_len=("max_seq_len", "first"),
    ).reset_index()
    out["_order"] = out["method"].ne(FULL)                    # full FT first in each cell, then by method and rank
    out = out.sort_values(["task", "model", "cell", "_order", "method", "r", "targets"], na_position="first")
    return out.drop(columns="_order").reset_index(drop=True)


def full_ft_reference(summary: pd.DataFrame, cell: str, budget: str) -> tuple[pd.Series | None, bool]:
    """(the full-FT variant a variant is compared with, whether its budget differs). Same cell; the same budget
    when there is one, else the full-FT variant trained on the most examples (flagged)."""
    full = summary[(summary["cell"] == cell) & (summary["method"] == FULL)]
    if full.empty:
        return None, False
    same = full[full["budget"] == budget]
    if not same.empty:
        return same.sort_values("score", ascending=False).iloc[0], False
    by_size = "train_examples" if "train_examples" in full else "score"
    return full.sort_values(by_size, ascending=False).iloc[0], True


RETENTION_COLUMNS = ["task", "model", "cell", "variant", "label", "method", "r", "targets", "selected_lr",
                     "lrs_tried", "n_seeds", "val_score", "score_mean", "score_low", "score_high",
                     "retention_mean", "retention_low", "retention_high", "grid_edge", "budget", "budget_mismatch",
                     "reference", "ref_n", "ref_score", "primary_metric", "seeds", "collapsed_lrs", "note"]


def retention(df: pd.DataFrame) -> pd.DataFrame:
    """Every variant at its selected rate: test score with its interval over seeds, and retention against the
    full-FT reference at that reference's own selected rate, with Fieller's interval (see the module docstring)."""
    runs = at_selected_lr(df)
    summary = variant_summary(df)
    sel = selection(df).set_index(["cell", "variant"]) if not summary.empty else None
    rows = []
    for _, var in summary.iterrows():
        pick = sel.loc[(var["cell"], var["variant"])]
        scores = runs[(runs["cell"] == var["cell"]) & (runs["variant"] == var["variant"])]["score"].to_numpy()
        mean, low, high = t_interval(scores)
        row = {k: var[k] for k in KEYS} | {
            "selected_lr": pick["selected_lr"], "lrs_tried": pick["lrs_tried"], "n_seeds": int(var["n"]),
            "seeds": var["seeds"], "val_score": pick["val_score"], "score_mean": mean, "score_low": low,
            "score_high": high, "grid_edge": bool(pick["grid_edge"]), "budget": var["budget"],
            "collapsed_lrs": pick["collapsed_lrs"], "primary_metric": var["primary_metric"], "budget_mismatch": False}
        # (the selection's own note, e.g. "one rate tried", is in the selection table; lrs_tried shows it here)
        selection_note = pick["selection_note"] if pick["selection_note"] != "one rate tried" else ""
        notes = [n for n in [selection_note, "grid edge: widen the grid" if pick["grid_edge"] else ""] if n]
        ref, mismatch = full_ft_reference(summary, var["cell"], var["budget"])
        if ref is None:
            rows.append(row | {"note": "; ".join(notes + ["no full-FT run on this task/model/data"])})
            continue
        row |= {"reference": ref["label"], "ref_n": int(ref["n"]), "ref_score": ref["score"], "budget_mismatch": mismatch}
        if mismatch:
            notes.append(f"budget differs from full FT's ({var['budget']} vs {ref['budget']})")
        if not ref["score"] > 0:
            rows.append(row | {"note": "; ".join(notes + [f"full-FT score is {ref['score']:.3g}: retention undefined"])})
            continue
        if var["variant"] == ref["variant"]:
            rows.append(row | {"retention_mean": 100.0, "retention_low": math.nan, "retention_high": math.nan,
                               "note": "; ".join(["reference"] + notes)})
            continue
        ref_scores = runs[(runs["cell"] == ref["cell"]) & (runs["variant"] == ref["variant"])]["score"].to_numpy()
        ratio, r_low, r_high = fieller_interval(scores, ref_scores)
        if len(scores) < 2 or len(ref_scores) < 2:
            notes.append(f"n={len(scores)} vs reference n={len(ref_scores)}: no interval")
        elif math.isinf(r_low):
            notes.append("interval unbounded (reference too noisy)")
        rows.append(row | {"retention_mean": 100 * ratio, "retention_low": 100 * r_low,
                           "retention_high": 100 * r_high, "note": "; ".join(notes)})
    return pd.DataFrame(rows, columns=RETENTION_COLUMNS)


def format_retention(row: pd.Series) -> str:
    """"97.1% [93.0, 101.2] n=3", "97.1% (n=1, no CI)", "100% (reference)", or why there is no number."""
    value, low = row.get("retention_mean"), row.get("retention_low")
    if pd.isna(value):
        return str(row.get("note") or "n/a")
    if str(row.get("note") or "").startswith("reference"):
        return f"{value:.0f}% (reference)"
    if pd.isna(low):
        return f"{value:.1f}% (n={int(row['n_seeds'])}, no CI)"
    if math.isinf(low):
        return f"{value:.1f}% (unbounded CI) n={int(row['n_seeds'])}"
    return f"{value:.1f}% [{low:.1f}, {row['retention_high']:.1f}] n={int(row['n_seeds'])}"


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
        ref, _ = full_ft_reference(summary, var["cell"], var["budget"])
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
    merged = ret.merge(summary.reindex(columns=["cell", "variant", "peak_mem_bytes", "mem_kind"]), on=["cell", "variant"], how="left")
    rows = []
    for (task, model, cell), part in merged.groupby(["task", "model", "cell"], sort=False):
        scored = part[part["retention_mean"].notna()]
        if scored.empty:
            why = part["note"].dropna().iloc[0] if part["note"].notna().any() else "no retention"
            rows.append({"task": task, "model": model, "cell": cell, "recommended": "", "note": f"no retention: {why}"})
            continue
        good = scored[(scored["retention_mean"] >= threshold) & scored["peak_mem_bytes"].notna()]
        if good.empty:
            rows.append({"task": task, "model": model, "cell": cell, "recommended": "", "note": "no peak memory recorded"})
            continue
        best = good.sort_values(["peak_mem_bytes", "retention_mean"], ascending=[True, False]).iloc[0]
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
    from harness.assets import CONF_DIR  # noqa: PLC0415

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
