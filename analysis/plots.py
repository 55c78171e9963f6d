"""The report's figures (matplotlib, PNG). Each method keeps one colour in every figure (`method_color`); target
groups are told apart by marker. A figure with nothing to show is skipped (its function returns None), and the
report says why.
"""

from __future__ import annotations

import zlib
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

from analysis.tables import FULL, GIB, MIB  # noqa: E402

# Fixed colours for the methods the harness knows, so a method looks the same in every report.
METHOD_COLORS = {
    "full": "#222222", "lora": "#1f77b4", "rslora": "#17becf", "dora": "#2ca02c", "qlora": "#ff7f0e",
    "ia3": "#d62728", "adalora": "#9467bd", "prefix": "#8c564b", "prompt": "#e377c2", "vera": "#bcbd22",
    "pissa": "#7f7f7f", "loha": "#aec7e8", "lokr": "#98df8a", "oft": "#ffbb78", "boft": "#c5b0d5",
}
MARKERS = ["o", "s", "^", "D", "v", "P", "X", "*"]
DPI = 110


def method_color(method: str):
    """The method's fixed colour; an unknown method gets a stable colour from its name."""
    if method in METHOD_COLORS:
        return METHOD_COLORS[method]
    return plt.get_cmap("tab20")(zlib.crc32(str(method).encode()) % 20)


def _markers(values: pd.Series) -> dict[str, str]:
    names = sorted({str(v) for v in values.dropna()})
    return {name: MARKERS[i % len(MARKERS)] for i, name in enumerate(names)}


def panel_grid(n: int, width: float = 5.2, height: float = 3.8):
    cols = min(n, 3)
    rows = -(-n // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(width * cols, height * rows), squeeze=False)
    for ax in axes.flat[n:]:
        ax.set_visible(False)
    return fig, list(axes.flat[:n])


def save_figure(fig, path: Path) -> Path:
    fig.tight_layout()
    fig.savefig(path, dpi=DPI)
    plt.close(fig)
    return path


def _cells(data: pd.DataFrame) -> list[tuple[str, pd.DataFrame]]:
    """One panel per task, model and data cell; the title names the data only where a task and model have several."""
    several = data.groupby(["task", "model"])["cell"].nunique().max() > 1
    out = []
    for (task, model, cell), part in data.groupby(["task", "model", "cell"], sort=False):
        data_id = "/".join(str(cell).split("|")[2:])
        out.append((f"{task} · {model}" + (f"\ndata {data_id}" if several else ""), part))
    return out


def _cell_panels(data: pd.DataFrame, **size: float):
    """A figure with one panel per (task, model) cell of `data`: (figure, axes, [(title, rows)])."""
    panels = _cells(data)
    fig, axes = panel_grid(len(panels), **size)
    return fig, axes, panels


def retention_vs_rank(ret: pd.DataFrame, out: Path, threshold: float) -> Path | None:
    """Retention (% of full FT) against LoRA rank, one panel per task and model; error bars: 95% t-interval."""
    if ret.empty:  # no retention at all (only failed runs): pandas left the columns untyped
        return None
    data = ret[ret["retention_mean"].notna() & np.isfinite(ret["retention_mean"]) & ret["r"].notna()]
    if data.empty:
        return None
    fig, axes, panels = _cell_panels(data)
    markers = _markers(ret["targets"])
    for ax, (title, part) in zip(axes, panels):
        for (method, targets), line in part.groupby(["method", "targets"], sort=False, dropna=False):
            line = line.sort_values("r")
            err = np.vstack([line["retention_mean"] - line["retention_low"], line["retention_high"] - line["retention_mean"]])
            err = np.where(np.isfinite(err), err, 0)
            ax.errorbar(line["r"], line["retention_mean"], yerr=np.nan_to_num(err), color=method_color(method),
                        marker=markers.get(str(targets), "o"), capsize=3, label=f"{method} {targets}")
        ax.axhline(100, color=method_color(FULL), lw=1, ls="-", label="full FT (100%)")
        ax.axhline(threshold, color="grey", lw=1, ls=":", label=f"{threshold:g}% bar")
        _rank_axis(ax, part["r"])
        ax.set(title=title, xlabel="rank r (log scale)", ylabel="retention (% of full-FT score)")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    return save_figure(fig, out / "retention_vs_rank.png")


def _rank_axis(ax, ranks: pd.Series) -> None:
    """Ranks on a log2 x axis, ticked at the ranks that were run."""
    ax.set_xscale("log", base=2)
    ticks = sorted(ranks.dropna().unique())
    ax.set_xticks(ticks, [str(int(r)) for r in ticks])


def score_vs_memory(summary: pd.DataFrame, out: Path) -> Path | None:
    """Score against peak training memory per variant (seed means), Pareto front as a step line."""
    data = summary[summary["score"].notna() & summary["peak_mem_bytes"].notna()]
    if data.empty:
        return None
    fig, axes, panels = _cell_panels(data, width=5.8)
    markers = _markers(summary["targets"])
    for ax, (title, part) in zip(axes, panels):
        for _, row in part.iterrows():
            if row["score_sd"] > 0:  # spread over seeds
                ax.errorbar(row["peak_mem_bytes"] / GIB, row["score"], yerr=row["score_sd"], fmt="none",
                            ecolor=method_color(row["method"]), capsize=3, lw=1, zorder=2)
            ax.scatter(row["peak_mem_bytes"] / GIB, row["score"], color=method_color(row["method"]), s=50,
                       marker=markers.get(str(row["targets"]), "o"), edgecolor="black" if row["on_front"] else "none",
                       zorder=3)
            ax.annotate(row["label"], (row["peak_mem_bytes"] / GIB, row["score"]), fontsize=7,
                        xytext=(4, 3), textcoords="offset points")
        front = part[part["on_front"]].sort_values("peak_mem_bytes")
        ax.step(front["peak_mem_bytes"] / GIB, front["score"], where="post", color="black", lw=1, ls="--",
                label="Pareto front", zorder=2)
        kind = "/".join(sorted(set(part["mem_kind"].astype(str))))
        ax.set(title=title, xlabel=f"peak memory during training (GiB, {kind})",
               ylabel=f"score ({part['primary_metric'].iloc[0]})")
        ax.margins(0.12)
        for method in part["method"].unique():
            ax.scatter([], [], color=method_color(method), label=method)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    return save_figure(fig, out / "score_vs_memory.png")


def throughput(summary: pd.DataFrame, out: Path, runs: pd.DataFrame | None = None) -> Path | None:
    """Training throughput (non-padding tokens/s) per variant: bar = mean over seeds, dots = the single runs
    (on a shared machine one slow run shows up as an outlier instead of hiding in a mean)."""
    data = summary[summary["train_tokens_per_s"].notna()]
    if data.empty:
        return None
    fig, axes, panels = _cell_panels(data, width=min(9.0, max(5.2, 0.45 * data["label"].nunique() + 2)))
    for ax, (title, part) in zip(axes, panels):
        x = np.arange(len(part))
        ax.bar(x, part["train_tokens_per_s"], color=[method_color(m) for m in part["method"]], alpha=0.85)
        if runs is not None:
            for xi, (_, var) in zip(x, part.iterrows()):
                single = runs[(runs["cell"] == var["cell"]) & (runs["variant"] == var["variant"])
                              & runs["status"].eq("ok")]["train_tokens_per_s"].dropna()
                ax.scatter(np.full(len(single), xi), single, color="black", s=14, zorder=3,
                           label="single runs" if xi == 0 else None)
            ax.legend(fontsize=7)
        ax.set_xticks(x, part["label"], rotation=35, ha="right", fontsize=8)
        ax.set(title=title, ylabel="training throughput (tokens/s)")
        ax.grid(alpha=0.3, axis="y")
    return save_figure(fig, out / "tokens_per_s.png")


def adapter_size_vs_rank(summary: pd.DataFrame, out: Path) -> Path | None:
    """Size on disk of what each run saved against rank; full FT (the whole model) as a horizontal line."""
    data = summary[summary["adapter_bytes"].notna()]
    ranked = data[data["r"].notna()]
    if ranked.empty:
        return None
    panels = list(data.groupby("model", sort=False))
    fig, axes = panel_grid(len(panels))
    markers = _markers(summary["targets"])
    for ax, (model, part) in zip(axes, panels):
        lines = part[part["r"].notna()].groupby(["method", "targets", "r"], dropna=False)["adapter_bytes"].mean()
        for (method, targets), line in lines.reset_index().groupby(["method", "targets"], sort=False, dropna=False):
            ax.plot(line["r"], line["adapter_bytes"] / MIB, color=method_color(method),
                    marker=markers.get(str(targets), "o"), label=f"{method} {targets}")
        for method, flat in part[part["r"].isna()].groupby("method"):
            ax.axhline(flat["adapter_bytes"].mean() / MIB, color=method_color(method), ls="--", lw=1,
                       label=f"{method} (no rank)")
        _rank_axis(ax, part["r"])
        ax.set_yscale("log")
        ax.set(title=model, xlabel="rank r (log scale)", ylabel="saved size on disk (MiB, log scale)")
        ax.grid(alpha=0.3, which="both")
        ax.legend(fontsize=7)
    return save_figure(fig, out / "adapter_size_vs_rank.png")


def forgetting_vs_score(summary: pd.DataFrame, out: Path) -> Path | None:
    """Forgetting (rise of general-text loss after training) against task score: learning vs forgetting."""
    data = summary[summary["forgetting"].notna() & summary["score"].notna()]
    if data.empty:
        return None
    fig, axes, panels = _cell_panels(data)
    markers = _markers(summary["targets"])
    for ax, (title, part) in zip(axes, panels):
        for _, row in part.iterrows():
            ax.scatter(row["score"], row["forgetting"], color=method_color(row["method"]), s=50,
                       marker=markers.get(str(row["targets"]), "o"))
            ax.annotate(row["label"], (row["score"], row["forgetting"]), fontsize=7, xytext=(4, 3),
                        textcoords="offset points")
        for method in part["method"].unique():
            ax.scatter([], [], color=method_color(method), label=method)
        ax.axhline(0, color="grey", lw=1, ls=":")
        ax.set(title=title, xlabel=f"score ({part['primary_metric'].iloc[0]})",
               ylabel="forgetting (Δ general-text loss, nats/token)")
        ax.margins(0.15)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    return save_figure(fig, out / "forgetting_vs_score.png")


def lr_sensitivity(df: pd.DataFrame, sel: pd.DataFrame, out: Path) -> Path | None:
    """Validation score against learning rate per variant (mean over the seeds selection compares; one panel per
    cell); the selected rate ringed, collapsed runs as crosses at their rate."""
    ok = df[df["status"].eq("ok") & df["val_score"].notna() & df["lr"].notna()]
    if ok.empty or sel.empty:
        return None
    fig, axes, panels = _cell_panels(ok)
    labels = ok.drop_duplicates(["cell", "variant"]).set_index(["cell", "variant"])
    for ax, (title, part) in zip(axes, panels):
        for (cell, variant), _ in part.groupby(["cell", "variant"], sort=False):
            row = sel[(sel["cell"] == cell) & (sel["variant"] == variant)]
            if row.empty or not row.iloc[0]["val_by_lr"]:
                continue
            means = row.iloc[0]["val_by_lr"]
            method, name = labels.loc[(cell, variant), "method"], labels.loc[(cell, variant), "label"]
            lrs = sorted(means)
            ax.plot(lrs, [means[x] for x in lrs], marker="o", color=method_color(method), label=name)
            chosen = row.iloc[0]["selected_lr"]
            if chosen in means:
                ax.scatter([chosen], [means[chosen]], s=160, facecolors="none", edgecolors=method_color(method))
        bad = df[(df["status"] == "collapsed") & df["cell"].isin(part["cell"]) & df["lr"].notna()]
        for _, run in bad.iterrows():
            ax.scatter([run["lr"]], [run["val_score"] if pd.notna(run["val_score"]) else ax.get_ylim()[0]],
                       marker="x", color=method_color(run["method"]))
        ax.set_xscale("log")
        ax.set(title=title, xlabel="learning rate (log scale)",
               ylabel=f"validation {part['primary_metric'].iloc[0]} (mean over compared seeds)")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    return save_figure(fig, out / "lr_sensitivity.png")


def validation_curves(runs: pd.DataFrame, out: Path) -> Path | None:
    """Validation score (fixed subset) against non-padding tokens trained, for the runs at each variant's selected
    rate: one line per seed, one colour per method, one panel per cell."""
    data = runs[runs["val_curve"].map(lambda c: isinstance(c, list) and len(c) > 0)]
    if data.empty:
        return None
    fig, axes, panels = _cell_panels(data)
    for ax, (title, part) in zip(axes, panels):
        seen = set()
        for _, run in part.sort_values(["method", "seed"]).iterrows():
            curve = run["val_curve"]
            name = run["label"]
            ax.plot([p["tokens"] for p in curve], [p["val_score"] for p in curve], color=method_color(run["method"]),
                    lw=1, alpha=0.8, marker=".", label=None if name in seen else name)
            seen.add(name)
        ax.set(title=title, xlabel="non-padding tokens trained", ylabel=f"validation {part['primary_metric'].iloc[0]} (subset)")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    return save_figure(fig, out / "validation_curves.png")


FIGURES = {
    "lr_sensitivity": "Validation score vs learning rate per variant (the selected rate ringed; crosses: collapsed runs)",
    "validation_curves": "Validation curves vs tokens trained, at each variant's selected rate (one line per seed)",
    "retention_vs_rank": "Quality retention vs rank (Fieller 95% intervals)",
    "score_vs_memory": "Score vs peak memory (seed means, bars: standard deviation over seeds; Pareto front dashed, ringed points are on it)",
    "tokens_per_s": "Training throughput per method",
    "adapter_size_vs_rank": "Size on disk vs rank",
    "forgetting_vs_score": "Forgetting vs score",
}
