"""Figures of the intruder analysis (matplotlib PNGs); the numbers come from `analysis.intruder`.

Every curve is one label (method, rank, alpha when not 2r, learning rate), averaged over its seeds; error bars
are 95% Student-t intervals of that mean (none for a single seed). Runs at different learning rates are never
averaged together.
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
    """Full FT first, then each method by rank, then learning rate."""
    rows = labels.drop_duplicates("label")
    keyed = sorted(rows.itertuples(), key=lambda t: (t.method != "full", t.method, 0 if pd.isna(t.r) else t.r,
                                                     0 if pd.isna(getattr(t, "lr", None)) else t.lr))
    return [t.label for t in keyed]


def _mean_ci(values: pd.Series) -> pd.Series:
    """Mean and the half-width of its 95% t-interval (0 for one value, so no bar is drawn)."""
    from analysis.tables import t_interval

    mean, low, high = t_interval(values.astype(float))
    return pd.Series({"mean": mean, "half": 0.0 if np.isnan(low) else (high - low) / 2})


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
        part = sweep[sweep["label"] == label].groupby(x)["count"].apply(_mean_ci).unstack().reset_index()
        ax.errorbar(part[x], part["mean"], yerr=part["half"], marker="o", ms=3, capsize=2,
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


def _series(row: pd.Series) -> str:
    """The curve a run belongs to over rank: method, alpha rule and alpha x lr (the paper keeps it constant)."""
    alpha = "alpha=2r" if row["alpha"] == 2 * row["r"] else f"alpha={row['alpha']:g}"
    return f"{row['method']} {alpha}, alpha x lr = {row['alpha'] * row['lr']:.2g}"


def plot_vs_rank(summary: pd.DataFrame, out: Path, k: int, epsilon: float) -> Path:
    """Rank-limited methods over r, one curve per (method, alpha rule, alpha x lr); full FT as reference lines."""
    fig, ax = plt.subplots(figsize=(6.5, 4))
    ranked = summary[summary["r"].notna()].copy()
    if len(ranked):
        ranked["series"] = ranked.apply(_series, axis=1)
    for series, part in ranked.groupby("series") if len(ranked) else []:
        stats = part.groupby("r")["intruders"].apply(_mean_ci).unstack().reset_index()
        ax.errorbar(stats["r"], stats["mean"], yerr=stats["half"], marker="o", capsize=2, label=series)
    for lr, full in summary[summary["method"] == "full"].groupby("lr"):
        ax.axhline(full["intruders"].mean(), color="k", ls="--", label=f"full FT lr={lr:.3g} (mean of {len(full)})")
    if len(ranked):
        ax.set_xscale("log", base=2)
    ax.set(xlabel="rank r", ylabel=f"intruder dimensions (top {k}, eps {epsilon:g})", title="Intruder dimensions vs rank")
    ax.legend(fontsize=7)
    return _save(fig, out / "intruders_vs_rank.png")


def plot_vs_k_fraction(fractions: pd.DataFrame, out: Path, epsilon: float, order: list[str],
                       colors: dict[str, Any]) -> Path:
    """The paper's normalised-k sweep: each matrix tests its top ceil(f x width) singular vectors."""
    fig, ax = plt.subplots(figsize=(6, 4))
    _curves(ax, fractions, "k_fraction", order, colors)
    ax.set(xscale="log", xlabel="k / matrix width", ylabel="intruder dimensions (model total)",
           title=f"Intruder dimensions vs normalised k (epsilon={epsilon:g})")
    ax.legend(fontsize=7)
    return _save(fig, out / "intruders_vs_k_fraction.png")


def plot_vs_update_norm(summary: pd.DataFrame, out: Path, k: int, epsilon: float, order: list[str],
                        colors: dict[str, Any]) -> Path:
    """Rank or step size? Each run's intruder count against how far it moved the weights (||W - W0|| / ||W0||,
    mean over matrices): with alpha x lr held constant a higher rank also means a smaller learning rate."""
    fig, ax = plt.subplots(figsize=(6.5, 4))
    for label in order:
        part = summary[summary["label"] == label]
        ax.scatter(part["rel_update_mean"], part["intruders"], color=colors[label], label=label, s=22)
    ax.set(xscale="log", xlabel="relative update ||W - W0|| / ||W0|| (mean over matrices)",
           ylabel=f"intruder dimensions (top {k}, eps {epsilon:g})", title="Intruders vs size of the update")
    ax.legend(fontsize=7)
    return _save(fig, out / "intruders_vs_update_norm.png")


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
    stats = summary.groupby("label")["update_erank_mean"].apply(_mean_ci).unstack().reindex(order)
    right.bar(range(len(order)), stats["mean"], yerr=stats["half"], color=[colors[l] for l in order])
    right.set_xticks(range(len(order)), order, rotation=45, ha="right", fontsize=7)
    right.set(yscale="log", ylabel="effective rank of W - W0 (mean over matrices)", title="Effective rank (Roy & Vetterli)")
    return _save(fig, out / "update_spectrum.png")


def plot_vs_outcomes(summary: pd.DataFrame, corr: dict[str, Any], out: Path, order: list[str],
                     colors: dict[str, Any]) -> Path:
    """Does the intruder count track forgetting (the paper: yes) and task score (the paper: no)?"""
    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    probes = sorted({p for p in summary.get("forgetting_probe", pd.Series(dtype=object)).dropna()})
    for ax, other in zip(axes, ("forgetting", "score")):
        found = summary[summary[other].notna()]
        for label in order:
            part = found[found["label"] == label]
            ax.scatter(part["intruders"], part[other], color=colors[label], label=label, s=20)
        c = corr.get(other, {})
        rho = "n/a" if c.get("rho") is None else f"{c['rho']:.2f} (p={c['p']:.2g}, n={c['n']})"
        ylabel = f"forgetting ({', '.join(probes)})" if other == "forgetting" and probes else other
        ax.set(xlabel="intruder dimensions (model total)", ylabel=ylabel, title=f"vs {other}: Spearman rho {rho}")
        if found.empty:
            ax.text(0.5, 0.5, f"no run records '{other}'", ha="center", va="center", transform=ax.transAxes)
    axes[1].legend(fontsize=7)
    return _save(fig, out / "intruders_vs_forgetting.png")


def make_figures(summary: pd.DataFrame, sweep: pd.DataFrame, fractions: pd.DataFrame, tables: pd.DataFrame,
                 spectra: dict[str, np.ndarray], corr: dict[str, Any], out: Path, *, k: int,
                 epsilon: float) -> list[Path]:
    order = _order(summary)
    colors = _colors(order)
    return [
        plot_vs_epsilon(sweep, out, k, order, colors),
        plot_vs_rank(summary, out, k, epsilon),
        plot_per_layer(tables, out, order),
        plot_spectrum(summary, spectra, out, order, colors),
        plot_vs_outcomes(summary, corr, out, order, colors),
        plot_vs_k(sweep, out, epsilon, order, colors),
        plot_vs_k_fraction(fractions, out, epsilon, order, colors),
        plot_vs_update_norm(summary, out, k, epsilon, order, colors),
    ]


def plot_scaling(groups: pd.DataFrame, out: Path, k: int, epsilon: float) -> Path:
    """The causal test: change in forgetting (%) and in test score against lambda (fraction of each intruder kept)."""
    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4))
    for label, part in groups.groupby("label", sort=False):
        part = part.sort_values("lambda")
        if len(part) < 2:
            continue  # no intruder: nothing was scaled
        for ax, col in ((left, "forgetting_change_pct"), (right, "d_score")):
            half = ((part[f"{col}_high"] - part[f"{col}_low"]) / 2).fillna(0)
            ax.errorbar(part["lambda"], part[f"{col}_mean"], yerr=half, marker="o", capsize=2, label=label)
    left.set(xlabel="lambda (fraction of each intruder direction kept)", ylabel="forgetting change vs lambda = 1 (%)",
             title=f"Scaling intruders (top {k}, eps {epsilon:g}): forgetting")
    right.set(xlabel="lambda", ylabel="test score change vs lambda = 1", title="... and task score")
    for ax in (left, right):
        ax.axhline(0, color="k", lw=0.5)
    left.legend(fontsize=7)
    return _save(fig, out / "intruder_scaling.png")
