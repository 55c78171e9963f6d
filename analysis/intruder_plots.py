"""Figures of the intruder analysis (matplotlib PNGs); the numbers come from `analysis.intruder`.

Every curve is one method/rank label, averaged over seeds (error bars: standard deviation across seeds).
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402


def _order(labels: pd.DataFrame) -> list[str]:
    """Full FT first, then each method by rank."""
    rows = labels.drop_duplicates("label")
    keyed = sorted(rows.itertuples(), key=lambda t: (t.method != "full", t.method, 0 if pd.isna(t.r) else t.r))
    return [t.label for t in keyed]


def _colors(order: list[str]) -> dict[str, Any]:
    cmap = plt.get_cmap("tab10" if len(order) <= 10 else "tab20")
    return {label: cmap(i % cmap.N) for i, label in enumerate(order)}


def _save(fig: plt.Figure, path: Path) -> Path:
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def _curves(ax: plt.Axes, sweep: pd.DataFrame, x: str, order: list[str], colors: dict[str, Any]) -> None:
    for label in order:
        part = sweep[sweep["label"] == label].groupby(x)["count"].agg(["mean", "std"]).reset_index()
        ax.errorbar(part[x], part["mean"], yerr=part["std"].fillna(0), marker="o", ms=3, capsize=2,
                    label=label, color=colors[label])


def plot_vs_epsilon(sweep: pd.DataFrame, out: Path, k: int, order: list[str], colors: dict[str, Any]) -> Path:
    """The paper's central figure: intruder count (model total) as the similarity threshold loosens."""
    fig, ax = plt.subplots(figsize=(6, 4))
    _curves(ax, sweep[sweep["k"] == k], "epsilon", order, colors)
    ax.set(xlabel="epsilon (max |cos| threshold)", ylabel=f"intruder dimensions (top {k}, model total)",
           title="Intruder dimensions vs epsilon")
    ax.legend(fontsize=7)
    return _save(fig, out / "intruders_vs_epsilon.png")


def plot_vs_k(sweep: pd.DataFrame, out: Path, epsilon: float, order: list[str], colors: dict[str, Any]) -> Path:
    fig, ax = plt.subplots(figsize=(6, 4))
    _curves(ax, sweep[np.isclose(sweep["epsilon"], epsilon)], "k", order, colors)
    ax.set(xscale="log", xlabel="k (top singular vectors tested)", ylabel="intruder dimensions (model total)",
           title=f"Intruder dimensions vs k (epsilon={epsilon:g})")
    ax.legend(fontsize=7)
    return _save(fig, out / "intruders_vs_k.png")


def plot_vs_rank(summary: pd.DataFrame, out: Path, k: int, epsilon: float) -> Path:
    """Rank-limited methods as curves over r; full fine-tuning as a horizontal reference line."""
    fig, ax = plt.subplots(figsize=(6, 4))
    ranked = summary[summary["r"].notna()]
    for method, part in ranked.groupby("method"):
        stats = part.groupby("r")["intruders"].agg(["mean", "std"]).reset_index()
        ax.errorbar(stats["r"], stats["mean"], yerr=stats["std"].fillna(0), marker="o", capsize=2, label=method)
    full = summary[summary["method"] == "full"]
    if len(full):
        ax.axhline(full["intruders"].mean(), color="k", ls="--", label=f"full FT (mean of {len(full)})")
    if len(ranked):
        ax.set_xscale("log", base=2)
    ax.set(xlabel="rank r", ylabel=f"intruder dimensions (top {k}, eps {epsilon:g})", title="Intruder dimensions vs rank")
    ax.legend(fontsize=7)
    return _save(fig, out / "intruders_vs_rank.png")


def plot_per_layer(tables: pd.DataFrame, out: Path, order: list[str]) -> Path:
    """Which layers and which matrices carry intruders: one heatmap (matrix kind x layer) per label."""
    used = tables[tables["compared"]]
    n = len(order)
    cols = min(3, n)
    rows = math.ceil(n / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(5 * cols, 2.6 * rows), squeeze=False)
    grids = {label: used[used["label"] == label].pivot_table(index="kind", columns="layer", values="intruders", aggfunc="mean")
             for label in order}
    vmax = max([1.0] + [float(np.nanmax(g.to_numpy())) for g in grids.values() if g.size])
    for ax, label in zip(axes.flat, order):
        grid = grids[label]
        image = ax.imshow(grid.to_numpy(dtype=float), aspect="auto", cmap="viridis", vmin=0, vmax=vmax)
        ax.set_yticks(range(len(grid.index)), grid.index, fontsize=6)
        step = max(1, len(grid.columns) // 10)
        ax.set_xticks(range(0, len(grid.columns), step), list(grid.columns)[::step], fontsize=6)
        ax.set(title=label, xlabel="layer")
    for ax in list(axes.flat)[n:]:
        ax.axis("off")
    fig.colorbar(image, ax=axes.ravel().tolist(), shrink=0.8, label="intruders (mean over seeds)")
    fig.savefig(out / "intruders_per_layer.png", dpi=120)
    plt.close(fig)
    return out / "intruders_per_layer.png"


def plot_spectrum(summary: pd.DataFrame, spectra: dict[str, np.ndarray], out: Path, order: list[str],
                  colors: dict[str, Any]) -> Path:
    """The update W - W0: its normalised singular-value spectrum and its effective rank, per label."""
    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4))
    for label in order:
        ids = summary.loc[summary["label"] == label, "run_id"]
        mean = np.nanmean(np.stack([spectra[i] for i in ids]), axis=0)
        mean = mean[np.isfinite(mean) & (mean > 0)]
        left.plot(np.arange(1, len(mean) + 1), mean, label=label, color=colors[label])
    left.set(xscale="log", yscale="log", xlabel="index i", ylabel="s_i / s_1 of W - W0 (mean over matrices)",
             title="Spectrum of the update")
    left.legend(fontsize=7)
    stats = summary.groupby("label")["update_erank_mean"].agg(["mean", "std"]).reindex(order)
    right.bar(range(len(order)), stats["mean"], yerr=stats["std"].fillna(0), color=[colors[l] for l in order])
    right.set_xticks(range(len(order)), order, rotation=45, ha="right", fontsize=7)
    right.set(yscale="log", ylabel="effective rank of W - W0 (mean over matrices)", title="Effective rank (Roy & Vetterli)")
    return _save(fig, out / "update_spectrum.png")


def plot_vs_outcomes(summary: pd.DataFrame, corr: dict[str, dict[str, Any]], out: Path, order: list[str],
                     colors: dict[str, Any]) -> Path:
    """Does the intruder count track forgetting (the paper: yes) and task score (the paper: no)?"""
    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    for ax, other in zip(axes, ("forgetting", "score")):
        found = summary[summary[other].notna()]
        for label in order:
            part = found[found["label"] == label]
            ax.scatter(part["intruders"], part[other], color=colors[label], label=label, s=20)
        c = corr.get(other, {})
        rho = "n/a" if c.get("rho") is None else f"{c['rho']:.2f} (p={c['p']:.2g}, n={c['n']})"
        ax.set(xlabel="intruder dimensions (model total)", ylabel=other, title=f"vs {other}: Spearman rho {rho}")
        if found.empty:
            ax.text(0.5, 0.5, f"no run records '{other}'", ha="center", va="center", transform=ax.transAxes)
    axes[1].legend(fontsize=7)
    return _save(fig, out / "intruders_vs_forgetting.png")


def make_figures(summary: pd.DataFrame, sweep: pd.DataFrame, tables: pd.DataFrame, spectra: dict[str, np.ndarray],
                 corr: dict[str, dict[str, Any]], out: Path, *, k: int, epsilon: float) -> list[Path]:
    order = _order(summary)
    colors = _colors(order)
    return [
        plot_vs_epsilon(sweep, out, k, order, colors),
        plot_vs_rank(summary, out, k, epsilon),
        plot_per_layer(tables, out, order),
        plot_spectrum(summary, spectra, out, order, colors),
        plot_vs_outcomes(summary, corr, out, order, colors),
        plot_vs_k(sweep, out, epsilon, order, colors),
    ]
