"""Figures for claims 16-21 (matplotlib Agg, PNG): validation score against learning rate per method and rank with
each fitted optimum (claim 16's ratio visible as the distance between the dashed lines), the capacity curve of the
memorisation task (claim 18) and the learning-forgetting plane with full FT's frontier (claim 21). Each returns the
written path, or None when its frame holds nothing to draw. `make claims` (analysis/claims/report.py) draws every
figure the records allow into `<ledger>/figures/` and lists them in REPORT.md:

    python -m analysis.claims --runs runs/claims-2025 --out reports/claims-2025 --report reports/REPORT.md
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from analysis.claims import stats_2025 as st
from analysis.claims.rows_2025 import finished_runs, rows_trained
from analysis.plots import panel_grid, save_figure, method_color


def _variant_name(rows: pd.DataFrame) -> str:
    first = rows.iloc[0]
    alpha = first.get("alpha")
    return str(first["label"]) + (f" a={int(alpha)}" if pd.notna(alpha) and first["method"] != "full" else "")


def lr_curves(records: pd.DataFrame, path: Path) -> Path | None:
    """Per cell: mean validation score (bars: min to max over seeds) against the rate, one line per variant, its
    fitted optimum dashed; the legend gives each optimum and its ratio to full FT's."""
    ok = finished_runs(records)  # a collapsed rate is a point of its curve (claim 16 reads it the same way)
    ok = ok[ok["lr"].notna()]
    if ok.empty or ok.groupby("variant")["lr"].nunique().max() < 3:
        return None
    cells = [(cell, part) for cell, part in ok.groupby("cell", sort=False)
             if part.groupby("variant")["lr"].nunique().max() >= 3]  # a panel needs a curve
    fig, axes = panel_grid(len(cells), width=6.4, height=4.4)
    for ax, (cell, part) in zip(axes, cells):
        fits = {}
        for variant, rows in part.groupby("variant", sort=False):
            c = st.curve(rows)
            if c.log_lr.size >= 3 and len(c.seeds) >= 1:
                fits[variant] = st.fit_optimum(c.log_lr, c.scores.mean(axis=0))
        full_opt = next((fits[v][0] for v, rows in part.groupby("variant") if rows["method"].iloc[0] == "full"
                         and v in fits), None)
        for i, (variant, rows) in enumerate(part.groupby("variant", sort=False)):
            by_lr = rows.groupby("lr")["val_score"]
            lrs, mean = by_lr.mean().index.to_numpy(float), by_lr.mean().to_numpy(float)
            err = np.vstack([mean - by_lr.min().to_numpy(float), by_lr.max().to_numpy(float) - mean])
            colour = method_color(rows["method"].iloc[0])
            name = _variant_name(rows)
            if variant in fits:
                opt = 10 ** fits[variant][0]
                ratio = "" if full_opt is None or rows["method"].iloc[0] == "full" else f", {opt / 10 ** full_opt:.1f}x full"
                name += f": opt {opt:.2g}{ratio}" + (" (grid edge)" if fits[variant][1] else "")
                ax.axvline(opt, color=colour, linestyle="--", linewidth=0.8, alpha=0.7)
            ax.errorbar(lrs, mean, yerr=err, color=colour, marker="os^Dv"[i % 5], capsize=2, label=name)
        ax.set_xscale("log")
        ax.set_xlabel("learning rate")
        ax.set_ylabel(f"validation {part['primary_metric'].dropna().iloc[0] if part['primary_metric'].notna().any() else 'score'}")
        ax.set_title(str(cell).split("|")[0] + " / " + str(part["model"].iloc[0]), fontsize=9)
        ax.legend(fontsize=6.5)
    return save_figure(fig, path)


def capacity_curve(runs: pd.DataFrame, path: Path, chance: float | None = None) -> Path | None:
    """Memorisation accuracy on the training rows against their number (log scale), one line per LoRA rank and
    full FT, each at its selected rate; bars: 95% bootstrap interval over seeds."""
    runs = runs[runs["task"] == "memorize"] if not runs.empty and "task" in runs else runs
    if runs.empty:
        return None
    runs = runs.assign(n=rows_trained(runs))
    fig, (ax,) = panel_grid(1, width=6.4, height=4.4)
    gen = st.rng()
    for (method, r), rows in runs.groupby(["method", runs["r"].fillna(0)], sort=True):
        stats = []
        for n, part in rows.groupby("n"):
            low, high = st.interval(st.boot_means(part["score"], gen))
            stats.append((n, part["score"].mean(), low, high))
        n, mean, low, high = (np.array(x, float) for x in zip(*stats))
        name = "full FT" if method == "full" else f"{method} r={int(r)}"
        shade = 0.35 + 0.65 * (np.log2(r + 1) / 6 if method != "full" else 1)
        ax.errorbar(n, mean, yerr=[mean - low, high - mean], marker="o", capsize=2, label=name,
                    color=method_color(method), alpha=min(shade, 1.0))
    if chance is not None:
        ax.axhline(chance, color="grey", linestyle=":", linewidth=0.8, label="chance")
    ax.set_xscale("log", base=2)
    ax.set_xlabel("training rows (random labels)")
    ax.set_ylabel("accuracy on the training rows")
    ax.set_title("capacity: labels memorised (head frozen)", fontsize=9)
    ax.legend(fontsize=7)
    return save_figure(fig, path)


def forgetting_plane(points: pd.DataFrame, path: Path, title: str = "") -> Path | None:
    """Gain over the floor (share of full FT's) against forgetting increase: full FT's points over rates and
    budgets with their frontier, every other variant at its selected rate; bars: 95% intervals on both axes.
    `points`: analysis.claims.rules_2025_tradeoffs.plane_points (label, method, gain, forgetting and their _low / _high)."""
    if points.empty:
        return None
    fig, (ax,) = panel_grid(1, width=6.4, height=4.6)
    for _, p in points.iterrows():
        ax.errorbar(p["forgetting"], p["gain"], xerr=[[p["forgetting"] - p["forgetting_low"]], [p["forgetting_high"] - p["forgetting"]]],
                    yerr=[[p["gain"] - p["gain_low"]], [p["gain_high"] - p["gain"]]], marker="o" if p["method"] == "full" else "s",
                    color=method_color(p["method"]), capsize=2, linestyle="none", markersize=5)
        ax.annotate(p["label"] if p["method"] != "full" else f"{p['lr']:.2g}", (p["forgetting"], p["gain"]),
                    fontsize=6.5, xytext=(3, 3), textcoords="offset points")
    full = points[points["method"] == "full"]
    if not full.empty:
        fx, fy = st.frontier(full["forgetting"].to_numpy(float), full["gain"].to_numpy(float))
        ax.plot(fx, fy, color=method_color("full"), linewidth=1, label="full FT frontier")
        ax.legend(fontsize=7)
    ax.set_xlabel("forgetting (probe increase)")
    ax.set_ylabel("gain over floor / full FT's")
    ax.set_title(title or "learning vs forgetting", fontsize=9)
    return save_figure(fig, path)


def write_figures(ev, out: Path) -> list[Path]:
    """Every figure of claims 16-21 that the evidence supports, under `out`."""
    from analysis.claims.rules_2025_tradeoffs import plane_points

    out.mkdir(parents=True, exist_ok=True)
    written = [lr_curves(ev.records, out / "lr_curves.png") if ev.records is not None else None,
               capacity_curve(ev.runs, out / "capacity.png", chance=None)]
    if ev.records is not None and not ev.runs.empty:
        for i, cell in enumerate(ev.runs["cell"].unique()):
            points = plane_points(ev, cell, st.rng())
            task = str(cell).split("|")[0]
            written.append(forgetting_plane(points, out / f"forgetting_plane_{task}-{i}.png", title=str(cell).split("|")[0])
                           if not points.empty else None)
    return [p for p in written if p is not None]
