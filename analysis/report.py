"""The report a researcher reads: retention, memory-and-cost and recommendation tables and the figures, as one
self-contained HTML page (figures embedded), Markdown, PNGs and CSVs in one folder.

    python -m analysis.report --runs runs --out reports/classify               # from run folders (default)
    python -m analysis.report --runs runs --group classify --out reports/classify
    python -m analysis.report --source wandb --project peft-harness --group classify --out reports/classify
    make report NAME=classify

Writes REPORT_DIR/report.html, report.md, figures/*.png and tables/*.csv; prints the retention table.
"""

from __future__ import annotations

import argparse
import base64
import html
import sys
from datetime import datetime, timezone
from pathlib import Path

import pandas as pd

from analysis import plots
from analysis.runs import load_folders, load_wandb
from analysis.tables import (GIB, MIB, at_selected_lr, ok_runs, cost_table, selection, failures, format_retention, pareto, projection, recommendations,
                             retention, retention_pivot, variant_summary)
from harness.exits import error
from harness.errors import ConfigError, HarnessError
from harness.units import format_bytes

DEFINITIONS = [
    "Only runs with status `ok` count; `collapsed` runs (finite, but the loss ended above its start or the "
    "predictions fell onto one class) and every other status are listed under Failures with their reason.",
    "Scores compare within one task, model and data (same data fingerprint and split sizes). A variant is one "
    "effective config minus seed and learning rate.",
    "Each variant's learning rate is selected on the validation split: the best mean validation score over the "
    "seeds every tried rate has (ties: the smaller rate). A selected rate at the end of the tried ones is flagged "
    "'grid edge'. The test split is scored once per run and never used for a choice.",
    "Test score: mean over the seeds at the selected rate with a 95% Student-t interval (one seed: none).",
    "Retention = the variant's mean test score / full fine-tuning's (at full FT's own selected rate, same task, "
    "model, data, training examples and sequence length), in percent, with a 95% Fieller interval for the ratio "
    "of two independent means (t at min(n) - 1 degrees of freedom; both sides need two or more seeds). A "
    "variant trained on another budget than every full-FT run is flagged 'budget differs'.",
    "Peak memory is what the run measured: `cuda_allocated` = peak allocated by PyTorch on the GPU; `cpu_rss` = "
    "the process's peak resident memory (model, optimizer, activations and the Python process itself).",
    "Relative cost = training time / the full-FT reference's training time (same task, model, data).",
]


# Captions of the figures other analyses draw (analysis.intruder, analysis.continual), by file stem; the
# report's own figures take theirs from plots.FIGURES.
OTHER_CAPTIONS = {
    "intruders_vs_rank": "Intruder dimensions (top 10 singular vectors, epsilon 0.5) per run vs LoRA rank; full FT beside it",
    "intruders_vs_epsilon": "Intruder dimensions vs the similarity threshold epsilon, per group",
    "intruders_vs_k": "Intruder dimensions vs how many top singular vectors are searched (k), per group",
    "intruders_vs_k_fraction": "Intruder dimensions vs k as a fraction of each matrix's rank, per group",
    "intruders_vs_update_norm": "Intruder dimensions vs the relative size of the weight update, per run",
    "intruders_vs_forgetting": "Intruder dimensions vs forgetting (and vs test score), per run, with Spearman's rho",
    "intruders_per_layer": "Intruder dimensions per layer, per group",
    "update_spectrum": "Singular-value spectrum of the update W - W0 and its effective rank, per group",
    "intruder_scaling": "Scaling the intruder directions by lambda: forgetting and test-score change vs lambda",
    "continual_forgetting": "Continual learning: task scores and forgetting of general text after each stage",
    # claims 16-21 (analysis/claims/plots_2025.py, drawn by `make claims`)
    "lr_curves": "Claims 16-17: validation score vs learning rate per variant and rank, each fitted optimum dashed "
                 "(its ratio to full FT's in the legend)",
    "capacity": "Claim 18: memorised training labels vs training rows, per LoRA rank and full FT",
    "forgetting_plane": "Claim 21: gain over the floor vs forgetting per run configuration, with full FT's frontier",
}


def figure_caption(path: Path) -> str:
    """What a figure shows, from its file name (plots.FIGURES for the report's figures, OTHER_CAPTIONS for the
    intruder and continual analyses'), else its name in words."""
    stem = Path(path).stem
    family = next((k for k in OTHER_CAPTIONS if stem.startswith(k + "_")), None)  # forgetting_plane_<cell>
    return (plots.FIGURES.get(stem) or OTHER_CAPTIONS.get(stem)
            or (f"{OTHER_CAPTIONS[family]} ({stem[len(family) + 1:]})" if family else stem.replace("_", " ").capitalize()))


def _fmt(value, spec: str) -> str:
    return "" if value is None or pd.isna(value) else format(value, spec)


def with_data(table: pd.DataFrame) -> pd.DataFrame:
    """Replace the `cell` column by a short `data` id (data fingerprint, task-config hash) where one task and
    model were run on more than one data set or split size; drop it otherwise."""
    if table.empty or "cell" not in table:
        return table
    out = table.copy()
    cells = out.pop("cell")
    if cells.groupby([out["task"], out["model"]]).nunique().max() > 1:
        out.insert(out.columns.get_loc("model") + 1, "data", ["/".join(c.split("|")[2:]) for c in cells])
    return out


def score_with_interval(mean, low, high, metric) -> str:
    if pd.isna(mean):
        return ""
    ci = f" [{low:.3f}, {high:.3f}]" if pd.notna(low) else ""
    return f"{mean:.3f}{ci} {metric}"


def retention_display(ret: pd.DataFrame) -> pd.DataFrame:
    return pd.DataFrame({
        "task": ret["task"], "model": ret["model"], "cell": ret["cell"], "variant": ret["label"],
        "selected lr": [_fmt(v, "g") for v in ret["selected_lr"]],
        "lrs tried": ret["lrs_tried"], "seeds": ret["n_seeds"],
        "validation": [_fmt(v, ".3f") for v in ret["val_score"]],
        "test score (95% CI)": [score_with_interval(m, lo, hi, pm) for m, lo, hi, pm in
                                zip(ret["score_mean"], ret["score_low"], ret["score_high"], ret["primary_metric"])],
        "full-FT reference": [_fmt(s, ".3f") + (f" (n={int(n)})" if pd.notna(n) else "")
                              for s, n in zip(ret["ref_score"], ret["ref_n"])],
        "retention (95% Fieller CI)": ret.apply(format_retention, axis=1) if not ret.empty else [],
        "flags": [", ".join(f for f, on in (("grid edge", g), ("budget differs", b)) if on)
                  for g, b in zip(ret["grid_edge"], ret["budget_mismatch"])],
        "note": ret["note"].fillna(""),
    })


def _learned(row: pd.Series) -> str:
    """Whether full FT clears the cell's floor; a cell without a full-FT run (e.g. a sweep whose full-FT arm lives
    in another sweep's folder) cannot say, and is not called unlearned."""
    reference = row.get("reference")
    if not isinstance(reference, str) or not reference:  # NaN / None: the gain row found no full-FT run
        return "no full-FT run here"
    return "yes" if row.get("learned", True) else "NOT LEARNED"


def gain_display(gain: pd.DataFrame) -> pd.DataFrame:
    """The gain-retention table as the report shows it: one row per variant at its selected rate."""
    if gain is None or gain.empty:
        return pd.DataFrame()
    def pct(r: pd.Series, col: str) -> str:
        mean, low, high = r.get(f"{col}_mean"), r.get(f"{col}_low"), r.get(f"{col}_high")
        if pd.isna(mean):
            return ""
        return f"{mean:.1f}%" + ("" if pd.isna(low) else f" [{low:.1f}, {high:.1f}]")
    rows = [{"task": r["task"], "model": r["model"], "budget": r.get("budget", ""), "variant": r["label"],
             "seeds reported": r.get("seeds_reported", ""), "test score": _fmt(r.get("score_mean"), ".4f"),
             "floor": f"{r.get('floor_name') or '?'} {_fmt(r.get('floor_score'), '.4f')}",
             "gain retention": pct(r, "gain"), "raw retention": pct(r, "retention"),
             "interval": r.get("interval") or "", "learned": _learned(r)} for _, r in gain.iterrows()]
    return pd.DataFrame(rows)


def selection_display(sel: pd.DataFrame, summary: pd.DataFrame) -> pd.DataFrame:
    if sel.empty:
        return sel
    names = summary.set_index(["cell", "variant"])["label"].to_dict() if not summary.empty else {}
    task_model = {c: c.split("|")[:2] for c in sel["cell"]}
    return pd.DataFrame({
        "task": [task_model[c][0] for c in sel["cell"]], "model": [task_model[c][1] for c in sel["cell"]],
        "cell": sel["cell"], "variant": [names.get((c, v), v) for c, v in zip(sel["cell"], sel["variant"])],
        "validation by lr": [", ".join(f"{lr:g}: {m:.3f}" for lr, m in d.items()) for d in sel["val_by_lr"]],
        "selected lr": [_fmt(v, "g") for v in sel["selected_lr"]], "compared seeds": sel["selection_seeds"],
        "grid edge": ["yes" if g else "" for g in sel["grid_edge"]], "collapsed at": sel["collapsed_lrs"],
        "note": sel["selection_note"],
    })


def cost_display(cost: pd.DataFrame) -> pd.DataFrame:
    if cost.empty:
        return cost
    return pd.DataFrame({
        "task": cost["task"], "model": cost["model"], "cell": cost["cell"], "variant": cost["variant"], "seeds": cost["n"],
        "trainable params": [_fmt(v, ",.0f") for v in cost["trainable params"]],
        "trainable %": [_fmt(v, ".3f") for v in cost["trainable %"]],
        "peak memory (GiB)": [f"{_fmt(v, '.2f')} {k}" for v, k in zip(cost["peak memory (GiB)"], cost["memory kind"])],
        "saved on disk": [format_bytes(v * MIB) for v in cost["on disk (MiB)"]],
        "tokens/s": [_fmt(v, ",.0f") for v in cost["tokens/s"]],
        "train time (s)": [_fmt(v, ",.1f") for v in cost["train time (s)"]],
        "relative cost (x full FT)": [_fmt(v, ".2f") or "no full FT" for v in cost["relative cost (x full FT)"]],
    })


def projection_display(proj: pd.DataFrame) -> pd.DataFrame:
    """Peak memory in GiB (one decimal), sizes on disk in the unit that reads best."""
    out = pd.DataFrame({"variant": proj["variant"]}) if not proj.empty else proj
    for col in proj.columns[1:]:
        if col.endswith("on disk (GiB)"):
            out[col.replace(" (GiB)", "")] = [format_bytes(v * GIB) for v in proj[col]]
        else:
            out[col] = [_fmt(v, ",.1f") for v in proj[col]]
    return out


def recommendation_display(rec: pd.DataFrame) -> pd.DataFrame:
    out = rec.copy()
    for col, spec in (("peak memory (GiB)", ".2f"), ("memory vs full FT", ".2f")):
        if col in out:
            out[col] = [_fmt(v, spec) for v in out[col]]
    return out.astype(object).where(out.notna(), "")


def pareto_display(summary: pd.DataFrame) -> pd.DataFrame:
    front = summary[summary["on_front"]]
    return pd.DataFrame({"task": front["task"], "model": front["model"], "cell": front["cell"], "variant": front["label"],
                         "score": [_fmt(v, ".3f") for v in front["score"]],
                         "peak memory (GiB)": [_fmt(v / GIB, ".2f") for v in front["peak_mem_bytes"]]})


def analyse(df: pd.DataFrame, threshold: float) -> dict[str, pd.DataFrame]:
    """Every table of the report, computed once from the runs."""
    summary = pareto(variant_summary(df))
    ret = retention(df)
    proj, proj_note = projection(summary)
    from analysis.gain import gain_table

    gain = gain_table(df)[0] if not ok_runs(df).empty else pd.DataFrame()
    return {"runs": df, "variants": summary, "retention": ret, "gain": gain, "selection": selection(df),
            "selected_runs": at_selected_lr(df), "cost": cost_table(summary), "projection": proj,
            "projection_note": proj_note, "recommendations": recommendations(ret, summary, threshold),
            "failures": failures(df)}


def sections(res: dict, threshold: float) -> list[tuple[str, str, pd.DataFrame]]:
    """(title, note, table) in the order the report shows them."""
    ret = res["retention"]
    return [
        ("Gain over the floor (the ledger's yardstick)",
         "Gain retention = (variant - floor) / (full FT - floor), the floor being the task's best trivial baseline "
         "on validation (majority class, copying the input, the untuned model); 95% interval from the seeds x items "
         "bootstrap (analysis/bootstrap.py; 'seeds only' where the records hold no per-item scores). A cell whose "
         "full FT does not clear its floor is marked not learned: no retention there means anything.",
         with_data(gain_display(res["gain"]))),
        ("Quality retention (raw)", "Score as a percentage of full fine-tuning's on the same task, model and data.",
         with_data(retention_display(ret))),
        ("Learning-rate selection", "Validation score per tried rate (mean over the compared seeds); the selected rate.",
         with_data(selection_display(res["selection"], res["variants"]))),
        ("Retention by rank", "The same numbers, one column per rank.", with_data(retention_pivot(ret, "r"))),
        ("Retention by target group", "The same numbers, one column per target-module group.",
         with_data(retention_pivot(ret, "targets"))),
        ("Memory and cost, measured", "Seed means per variant, on the models actually run.",
         with_data(cost_display(res["cost"]))),
        ("Projected peak memory on large models", res["projection_note"], projection_display(res["projection"])),
        (f"Recommendation per task (retention >= {threshold:g}%, lowest peak memory)",
         "Mean retention decides; full FT is 100% by definition, so it is the answer when nothing else reaches the bar.",
         with_data(recommendation_display(res["recommendations"]))),
        ("Pareto front: score vs peak memory", "Variants no other variant beats on both score and memory.",
         with_data(pareto_display(res["variants"]))),
        ("Failures", "Runs that did not finish ok; excluded from every number above.", res["failures"]),
    ]


def make_figures(res: dict, figdir: Path, threshold: float) -> dict[str, Path | str]:
    """Every figure's PNG path, or the reason it was not drawn."""
    figdir.mkdir(parents=True, exist_ok=True)
    summary, ret = res["variants"], res["retention"]
    made = {
        "lr_sensitivity": (plots.lr_sensitivity(res["runs"], res["selection"], figdir),
                           "no run with a validation score and a learning rate"),
        "validation_curves": (plots.validation_curves(res["selected_runs"], figdir),
                              "no run recorded a validation curve (train.eval_every)"),
        "retention_vs_rank": (plots.retention_vs_rank(ret, figdir, threshold),
                              "no ranked variant with a full-FT partner"),
        "score_vs_memory": (plots.score_vs_memory(summary, figdir), "no run with a score and peak memory"),
        "tokens_per_s": (plots.throughput(summary, figdir, res["runs"]), "no run recorded throughput"),
        "adapter_size_vs_rank": (plots.adapter_size_vs_rank(summary, figdir), "no ranked variant saved an adapter"),
        "forgetting_vs_score": (plots.forgetting_vs_score(summary, figdir), "no run recorded forgetting"),
    }
    return {key: path if path is not None else reason for key, (path, reason) in made.items()}


def _md_table(table: pd.DataFrame) -> str:
    return table.to_markdown(index=False, disable_numparse=True) if not table.empty else "_(none)_"


def write_markdown(path: Path, title: str, header: list[str], shown, figures) -> None:
    lines = [f"# {title}", "", *[f"- {h}" for h in header], "", "## Definitions", "",
             *[f"- {d}" for d in DEFINITIONS], ""]
    for name, note, table in shown:
        lines += [f"## {name}", "", note, "", _md_table(table), ""]
    lines += ["## Figures", ""]
    for number, (key, value) in enumerate(figures.items(), 1):
        caption = plots.FIGURES[key]
        lines += [f"### Figure {number}. {caption}", "",
                  f"![{caption}](figures/{value.name})" if isinstance(value, Path) else f"_not drawn: {value}_", "",
                  f"*Figure {number}. {caption}. {FIGURE_SOURCE}*", ""]
    path.write_text("\n".join(lines))


FIGURE_SOURCE = "From the runs listed in this report's header; only runs with status ok are drawn."


CSS = """body{font-family:system-ui,sans-serif;margin:2em auto;max-width:1200px;color:#222;padding:0 1em}
table{border-collapse:collapse;font-size:13px;margin:.5em 0 1.5em}th,td{border:1px solid #ccc;padding:3px 8px;
text-align:left}th{background:#f2f2f2}img{max-width:100%;border:1px solid #eee}.note{color:#555}
figure{margin:1em 0 2em}figcaption{font-weight:600;margin-bottom:.3em}"""


def _data_uri(path: Path) -> str:
    return "data:image/png;base64," + base64.b64encode(path.read_bytes()).decode("ascii")


def write_html(path: Path, title: str, header: list[str], shown, figures) -> None:
    esc = html.escape
    body = [f"<h1>{esc(title)}</h1>", "<ul>", *[f"<li>{esc(h)}</li>" for h in header], "</ul>",
            "<h2>Definitions</h2><ul>", *[f"<li>{esc(d)}</li>" for d in DEFINITIONS], "</ul>"]
    for name, note, table in shown:
        body += [f"<h2>{esc(name)}</h2>", f"<p class='note'>{esc(note)}</p>",
                 table.to_html(index=False, na_rep="", border=0) if not table.empty else "<p><em>(none)</em></p>"]
    body.append("<h2>Figures</h2>")
    for number, (key, value) in enumerate(figures.items(), 1):
        caption = esc(plots.FIGURES[key])
        label = f"<figcaption>Figure {number}. {caption}. <span class='note'>{esc(FIGURE_SOURCE)}</span></figcaption>"
        if isinstance(value, Path):
            body.append(f"<figure>{label}<img src='{_data_uri(value)}' alt='{caption}'></figure>")
        else:
            body.append(f"<figure>{label}<p class='note'>not drawn: {esc(value)}</p></figure>")
    path.write_text(f"<!doctype html><html lang='en'><head><meta charset='utf-8'><title>{esc(title)}</title>"
                    f"<style>{CSS}</style></head><body>\n" + "\n".join(body) + "\n</body></html>\n")


def build(df: pd.DataFrame, out: Path, threshold: float = 95.0, title: str | None = None,
          source: str = "") -> dict[str, Path]:
    """Write the whole report for the runs in `df` into `out`; returns the paths written."""
    if not 0 < threshold <= 200:
        raise ConfigError(f"--threshold is a retention percentage, got {threshold}; e.g. --threshold 95")
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    title = title or f"PEFT vs full fine-tuning: {out.name}"
    res = analyse(df, threshold)
    shown = sections(res, threshold)
    figures = make_figures(res, out / "figures", threshold)
    n_ok = int(df["status"].eq("ok").sum())
    header = [f"{len(df)} runs ({n_ok} ok, {len(df) - n_ok} not ok) from {source or 'run folders'}",
              f"tasks: {', '.join(sorted(df['task'].dropna().astype(str).unique()))}; "
              f"models: {', '.join(sorted(df['model'].dropna().astype(str).unique()))}",
              f"generated {datetime.now(timezone.utc).isoformat(timespec='seconds')}"]
    tables = out / "tables"
    tables.mkdir(exist_ok=True)
    for name, table in res.items():
        if isinstance(table, pd.DataFrame):
            table.to_csv(tables / f"{name}.csv", index=False)
    write_markdown(out / "report.md", title, header, shown, figures)
    write_html(out / "report.html", title, header, shown, figures)
    written = {"html": out / "report.html", "markdown": out / "report.md", "tables": tables}
    return written | {k: v for k, v in figures.items() if isinstance(v, Path)}


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m analysis.report", description=__doc__.split("\n\n")[0])
    p.add_argument("--source", choices=("folders", "wandb"), default="folders", help="where runs are read from")
    p.add_argument("--runs", action="append", help="run folders root (repeatable; default: runs)")
    p.add_argument("--project", help="W&B project (with --source wandb)")
    p.add_argument("--entity", help="W&B entity (default: your default entity)")
    p.add_argument("--group", help="keep one sweep's runs (the W&B group / result.json `group`)")
    p.add_argument("--out", help="report folder (default: reports/<group or runs folder name>)")
    p.add_argument("--threshold", type=float, default=95.0, help="retention %% a recommendation must reach")
    p.add_argument("--title", help="report title")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        if args.source == "wandb":
            if not args.project:
                raise ConfigError("--source wandb needs --project (and usually --group), e.g. --project peft-harness --group classify")
            df = load_wandb(args.project, group=args.group, entity=args.entity)
            source = f"W&B {args.entity + '/' if args.entity else ''}{args.project}" + (f" group {args.group}" if args.group else "")
        else:
            roots = args.runs or ["runs"]
            df = load_folders(roots, group=args.group)
            source = ", ".join(roots) + (f" (group {args.group})" if args.group else "")
        name = args.group or Path((args.runs or ["runs"])[0]).resolve().name
        written = build(df, Path(args.out or Path("reports") / name), args.threshold, args.title, source)
    except HarnessError as err:
        return error(err)
    shown = with_data(retention_display(retention(df)))
    statuses = ", ".join(f"{n} {s}" for s, n in df["status"].value_counts().items())
    print(shown.to_string(index=False) if not shown.empty else
          f"no retention to show: {len(df)} runs ({statuses}); the report's Failures section lists why")
    print(f"\nreport: {written['html']}  (Markdown: {written['markdown']}, tables: {written['tables']}/)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
