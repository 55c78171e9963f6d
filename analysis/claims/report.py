"""The claims ledger: gather the evidence from a study's records, apply every claim's rule
(analysis/claims/rules.py), and write the ledger, the study report and the W&B tables.

    python -m analysis.claims --runs results/study --out results/study/claims --report results/REPORT.md
    make claims                                                       # the same
    python -m analysis.claims --runs results/study --wandb-project peft-harness --wandb-group study
    python -m analysis.claims --runs results/study --plan     # claim by claim, the runs that would decide it
    python -m analysis.claims --runs results/study --earlier results/study-2026-12   # make claims

`--earlier`: a claim the study has not run (`not run`) shows the earlier study's verdict instead, marked with that
study's name in the ledger, the findings and claims.json (`earlier`). Each verdict reads one study's records:
the two protocols are never mixed in one verdict.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Sequence
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any

import pandas as pd

from analysis.claims.rules import SHOWN, Evidence, Verdict, ledger
from analysis.claims.verdicts import NOT_RUN, counts_line, shown
from analysis.claims.findings import findings_markdown, scope, update_readme_block
from analysis.claims.memory import CLAIM_14, frontier_markdown, memory_frontier, workload, write_frontier
from harness.exits import error
from harness.errors import HarnessError


# ---- gathering and writing -----------------------------------------------------------------------------------

# the estimator's rows: claims 10 and 15 read the first two (parameter counts, at the harness's defaults), claim 14
# the rest, each at the workload its quoted figure assumes (analysis/claims/memory.py)
ESTIMATES = {
    "lora": ["model=llama-3.1-8b", "method=lora", "r=16", "targets=qv"],
    "ia3": ["model=llama-3.1-8b", "method=ia3", "targets=ia3"],
    **{name: overrides for name, (overrides, _) in CLAIM_14.items()},
}


def estimator_rows() -> dict[str, dict[str, Any]]:
    from harness.estimate import estimate_overrides

    return {name: estimate_overrides(overrides, device="cuda").as_dict() for name, overrides in ESTIMATES.items()}


def _glob(roots: Sequence[Path], name: str) -> list[Path]:
    return sorted(p for root in roots for p in Path(root).rglob(name))


CALIBRATION_DIR = "budget"  # results/<study>/budget/: the runs that sized a sweep (one seed each), never evidence


def without_calibration(df: pd.DataFrame, roots: Sequence[Path]) -> pd.DataFrame:
    """The runs that are not calibration runs: none whose folder lies under a `budget/` folder of a root."""
    def calibration(source: str) -> bool:
        for root in map(Path, roots):
            try:
                return CALIBRATION_DIR in Path(source).resolve().relative_to(Path(root).resolve()).parts
            except ValueError:
                continue
        return False

    return df[~df["source"].map(calibration)] if not df.empty else df


def gather(roots: Sequence[Path], estimates: bool = True) -> Evidence:
    from analysis import tables
    from analysis.runs import load_folders

    from analysis.choices import selection_optimism
    from analysis.gain import gain_table

    df = without_calibration(load_folders(roots), roots)
    table, study = gain_table(df)
    runs = tables.at_selected_lr(df, with_search=True)  # the rules pick reported seeds themselves (gain.py)
    ev = Evidence(retention=table, runs=runs, study=study, optimism=selection_optimism(runs, tables.selection(df)),
                  records=df)
    summaries = _glob(roots, "intruder_summary.csv")
    complete = [p.parent for p in summaries if (p.parent / "intruder_groups.csv").exists()
                and (p.parent / "intruder_correlations.json").exists()]
    if complete:  # several analyses: the one over the most runs (it holds the others' runs or outnumbers them)
        folder = max(complete, key=lambda d: (len(pd.read_csv(d / "intruder_summary.csv")), str(d)))
        ev.intruder_groups = pd.read_csv(folder / "intruder_groups.csv")
        ev.intruder_summary = pd.read_csv(folder / "intruder_summary.csv")
        ev.intruder_correlations = json.loads((folder / "intruder_correlations.json").read_text()) | {
            "source": str(folder)}
    ev.forgetting_links = forgetting_links(complete)
    ev.serve = [json.loads(p.read_text()) for p in _glob(roots, "serve_bench.json")]
    ev.merges = [json.loads(p.read_text()) | {"name": p.parent.parent.name if p.parent.name == "report" else p.parent.name}
                 for p in _glob(roots, "merge_table.json")]
    if estimates:
        ev.estimates = estimator_rows()
        ev.memory_frontier = memory_frontier()
    return ev


def forgetting_links(folders: Sequence[Path]) -> list[dict[str, Any]]:
    """Intruders vs forgetting per base model, each from the analysis holding the most of that model's runs
    (among those where rho is defined: an analysis whose counts are all 0 has none): an
    encoder's probe (similarity ranking) and a causal LM's (loss on general English) are on different scales, and
    the study analyses them in separate folders (the encoder sweeps, the causal-LM arm)."""
    def rank(link: dict[str, Any]) -> tuple[bool, int]:
        return link.get("rho") is not None, link.get("n") or 0

    best: dict[str, dict[str, Any]] = {}
    for folder in folders:
        by_model = json.loads((folder / "intruder_correlations.json").read_text()).get("by_model") or {}
        table = folder / "intruder_summary.csv"
        summary = pd.read_csv(table) if table.exists() else None
        for model, corr in by_model.items():
            link = (corr.get("forgetting") or {}) | {"model": model, "source": str(folder),
                                                     "pairs": [] if summary is None else intruder_forgetting_pairs(summary, model)}
            if link.get("n") and (model not in best or rank(link) > rank(best[model])):
                best[model] = link
    return [best[m] for m in sorted(best)]


def intruder_forgetting_pairs(summary: pd.DataFrame, model: str) -> list[tuple[float, float]]:
    """(intruders, forgetting) of each of a model's runs in an intruder summary, one per training config and
    seed (a run two sweeps reached counts once), for the rank test of claim 11 (c)."""
    rows = summary[(summary["model"] == model) & summary["intruders"].notna() & summary["forgetting"].notna()]
    if {"label", "seed"} <= set(rows.columns):
        rows = rows.drop_duplicates(["label", "seed"])
    return [(float(a), float(b)) for a, b in zip(rows["intruders"], rows["forgetting"])]


def with_earlier(verdicts: list[Verdict], earlier: list[Verdict], name: str, scopes: dict[int, str]) -> list[Verdict]:
    """The study's verdicts, where a claim is `not run` replaced by the earlier study's verdict on it (marked with
    `name`, its scope prefixed); an earlier `not run` changes nothing. `scopes`: the earlier verdicts' scopes as
    the findings page reads them off the earlier evidence."""
    by_claim = {v.claim: v for v in earlier}
    out = []
    for v in verdicts:
        old = by_claim.get(v.claim)
        if v.verdict == NOT_RUN and old is not None and old.verdict != NOT_RUN:
            v = replace(old, earlier=name, scope=f"{name} (its protocol; not yet run in this study): "
                        f"{old.scope or scopes.get(old.claim, '')}")
        out.append(v)
    return out


def build(roots: Sequence[Path], earlier: Path | None = None, estimates: bool = True) -> tuple[Evidence, list[Verdict]]:
    """The study's evidence and verdicts; with `earlier`, a claim the study has not run takes that study's verdict
    (with_earlier), read from its own records alone."""
    evidence = gather(roots, estimates=estimates)
    verdicts = ledger(evidence)
    if earlier is not None and any(v.verdict == NOT_RUN for v in verdicts):
        before = gather([earlier], estimates=False)
        old = ledger(before)
        verdicts = with_earlier(verdicts, old, Path(earlier).name, {v.claim: scope(before, v) for v in old})
    return evidence, verdicts


def markdown(verdicts: list[Verdict], ev: Evidence | None = None) -> str:
    lines = ["# Claims ledger", "", counts_line(verdicts) + ".", "",
             "| # | claim | verdict | estimate | evidence / missing | scope |", "|---:|---|---|---|---|---|"]
    for v in verdicts:
        detail = "<br>".join(v.evidence) + (("<br>" if v.evidence else "") + f"missing: {v.missing}" if v.missing else "")
        if v.plan:
            detail += "<br>" + "<br>".join(f"to decide: {p}" for p in v.plan)
        lines.append(f"| <a id=\"claim-{v.claim}\"></a>{v.claim} | {v.text} | **{shown(v)}** | {v.estimate} | {detail} | "
                     f"{v.scope} |")
    lines += ["", "## Rules", ""] + [f"{v.claim}. {v.rule}" for v in verdicts]
    if ev is not None:
        lines += ["", yardstick(ev)]
    return "\n".join(lines) + "\n"


def yardstick(ev: Evidence) -> str:
    """How the score claims are measured: bootstrap, floors, reported seeds, selection optimism, choice points."""
    from analysis import bootstrap as boot
    from analysis.choices import choice_table
    from analysis.gain import MARGIN

    lines = ["## Yardstick", "",
             f"Gain retention = (method - floor) / (full FT - floor); raw retention = method / full FT. Intervals: "
             f"{boot.N_BOOT} resamples (generator seed {boot.BOOT_SEED}) of seeds, then test items (the same draw for "
             f"every method: paired), corpus metrics recomputed from per-item statistics; percentiles. Records "
             f"without per-item scores: seeds only, t(S-1)-scaled (each row says which). A cell is learned when the "
             f"95% lower bound of full FT minus floor is > {MARGIN:g}. Reported seeds leave out the seed that ran "
             "the learning-rate search when two or more others ran at the selected rate.", "",
             "### Floors per cell", "", "| task | model | budget | floor | floor test | full FT | learned | how chosen |",
             "|---|---|---|---|---:|---:|---|---|"]
    ret = ev.fair()
    full = ret[ret["method"] == "full"] if not ret.empty else ret
    for _, r in full.iterrows():
        fg = "" if pd.isna(r.get("full_gain_low")) else f" (full - floor {r['full_gain_mean']:+.3f} [{r['full_gain_low']:+.3f}, {r['full_gain_high']:+.3f}])"
        lines.append(f"| {r['task']} | {r['model']} | {r['budget']} | {r['floor_name']} | {r['floor_score']:.4f} | "
                     f"{r['score_mean']:.4f} | {'yes' if r['learned'] else 'NOT LEARNED'}{fg} | {r['floor_note']} |")
    opt = ev.optimism
    if opt is not None and not opt.empty:
        lines += ["", "### Selection optimism (selection seed's test score minus the other seeds' mean, at the selected rate)",
                  "", "| task | model | variant | selected lr | selection seed | others | optimism |", "|---|---|---|---:|---:|---:|---:|"]
        for _, o in opt.iterrows():
            lines.append(f"| {o['task']} | {o['model']} | {o['label']} | {o['selected_lr']:g} | {o['selection_score']:.4f} | "
                         f"{o['others_score']:.4f} (n={o['n_other']}) | {o['optimism']:+.4f} |")
        lines.append(f"| | | **mean over {len(opt)} variants** | | | | **{opt['optimism'].mean():+.4f}** |")
    lines += ["", "### Choice points (each reads validation only)", "", choice_table()]
    return "\n".join(lines) + "\n"


def plan_text(verdicts: list[Verdict]) -> str:
    """Claim by claim, the runs that would decide each inconclusive (or not learned) verdict."""
    lines = []
    for v in verdicts:
        if v.plan:
            lines.append(f"claim {v.claim} ({SHOWN.get(v.verdict, v.verdict)}): {v.text}")
            lines += [f"  - {p}" for p in v.plan]
        elif v.verdict in ("inconclusive",):
            lines.append(f"claim {v.claim} (inconclusive): no power plan (not a score claim)")
    return "\n".join(lines or ["every verdict is decided (or not run): nothing to add"]) + "\n"


def log_wandb(ev: Evidence, verdicts: list[Verdict], project: str, group: str, out: Path) -> str | None:
    """The ledger and the fair retention rows as W&B tables (`claims_ledger`, `retention`) in one analysis run of
    the study's group; analysis.wandb_report shows both. Offline without a login; returns the run's path."""
    import wandb

    from harness.tracking import resolve_mode

    run = wandb.init(project=project, group=group, name="claims-ledger", job_type="analysis", dir=str(out),
                     mode=resolve_mode("auto"), reinit="finish_previous",
                     settings=wandb.Settings(silent=True, console="off", save_code=False))
    ledger_columns = ["claim", "text", "verdict", "estimate", "evidence", "missing", "rule", "scope"]
    run.log({"claims_ledger": wandb.Table(columns=ledger_columns, data=[
        [v.claim, v.text, v.verdict, v.estimate, "; ".join(v.evidence), v.missing, v.rule, v.scope] for v in verdicts])})
    fair = ev.fair()
    columns = [c for c in ("task", "model", "label", "selected_lr", "n_seeds", "score_mean", "score_low", "score_high",
                           "retention_mean", "retention_low", "retention_high", "grid_edge") if c in fair]
    run.log({"retention": wandb.Table(columns=columns, data=fair[columns].astype(object).where(fair[columns].notna(), None).values.tolist())})
    run.summary.update({f"verdict/{v.claim}": v.verdict for v in verdicts})
    path = getattr(run, "path", None)
    run.finish()
    return "/".join(path) if isinstance(path, (list, tuple)) else path


def budget_text(ev: Evidence, row: pd.Series) -> str:
    """A setup's training budget in words: epochs (when the run counted them) and steps, with the examples x
    tokens the retention table compares on."""
    runs = ev.runs[(ev.runs["cell"] == row["cell"]) & (ev.runs["variant"] == row["variant"])]
    parts = []
    epochs = runs["train_epochs"].dropna().unique() if "train_epochs" in runs else []
    steps = runs["train_steps"].dropna().unique() if "train_steps" in runs else []
    if len(epochs) == 1:
        parts.append(f"{epochs[0]:g} epoch{'s' if epochs[0] != 1 else ''}")
    if len(steps) == 1:
        parts.append(f"{int(steps[0])} steps")
    budget = row.get("budget")
    return ", ".join(parts) + (f" ({budget})" if isinstance(budget, str) and budget else "")


def report_markdown(ev: Evidence, verdicts: list[Verdict], roots: Sequence[Path], report: Path) -> str:
    """results/REPORT.md: the ledger, retention with intervals (fair rows; each setup named by task, model and
    budget in their own columns), the estimator's memory rows with their workloads, the memory frontier and the
    study's figures with captions, all from the records under `roots`."""
    lines = [f"# What the measurements say (rebuilt by `make claims` from {', '.join(map(str, roots))})", "",
             "The short version with every headline number: [FINDINGS.md](FINDINGS.md).", "",
             markdown(verdicts, ev).replace("# Claims ledger", "## Claims ledger", 1).replace("\n## Rules", "\n### Rules")
             .replace("\n## Yardstick", "\n### Yardstick"), "## Retention at selected learning rates", "",
             "Fair rows (>= 3 seeds run, >= 2 learning rates tried): test score mean over the reported seeds with its "
             "95% interval, raw retention (method / full FT) and gain retention ((method - floor) / (full FT - floor)) "
             "with their 95% intervals (analysis/gain.py, analysis/bootstrap.py; the interval column says how).", "",
             "| task | model | budget | variant | selected lr | lrs tried | seeds (reported) | test score | floor | raw retention | "
             "gain retention | interval | note |", "|---|---|---|---|---:|---|---|---|---|---|---|---|---|"]
    def pct(r: pd.Series, col: str) -> str:
        if pd.isna(r[f"{col}_mean"]):
            return ""
        return f"{r[f'{col}_mean']:.1f}%" + ("" if pd.isna(r[f"{col}_low"]) else f" [{r[f'{col}_low']:.1f}, {r[f'{col}_high']:.1f}]")
    fair = ev.fair()
    if not fair.empty:
        fair = fair.assign(_budget=[budget_text(ev, r) for _, r in fair.iterrows()])
    for _, r in fair.sort_values(["task", "model", "_budget", "method", "r"], na_position="first").iterrows() if not fair.empty else []:
        score = f"{r['score_mean']:.4f}" + ("" if pd.isna(r["score_low"]) else f" [{r['score_low']:.4f}, {r['score_high']:.4f}]")
        lines.append(f"| {r['task']} | {r['model']} | {r['_budget']} | {r['label']} | {r.get('selected_lr', '')} | {r['lrs_tried']} | "
                     f"{int(r['n_seeds'])} ({r['seeds_reported']}) | {score} | {r['floor_name']} {r['floor_score']:.4f} | "
                     f"{pct(r, 'retention')} | {pct(r, 'gain')} | {r.get('interval') or ''} | {r.get('note') or ''} |")
    if ev.estimates:
        lines += ["", "## Memory (estimated: harness.estimate, CUDA; not measured)", "",
                  "Each row at the workload stated beside it: claim 14's rows at the quoted figures' workload, the "
                  "Llama-3.1-8B rows (claims 10 and 15: parameter counts) at the harness's defaults.", "",
                  "| preset | overrides | workload | trainable | peak GB | adapter / model on disk |",
                  "|---|---|---|---:|---:|---:|"]
        for name, est in ev.estimates.items():
            lines.append(f"| {name} | `{' '.join(ESTIMATES[name])}` | {workload(est)} | {est['params_trainable']:,} | "
                         f"{est['memory']['peak'] / 1e9:.1f} | {est['disk_bytes'] / 1e6:,.0f} MB |")
    if ev.memory_frontier:
        lines += ["", frontier_markdown(ev.memory_frontier).replace("# Memory frontier", "## Memory frontier", 1)
                  .replace("\n## ", "\n### ").rstrip("\n")]
    lines += figure_lines(roots, report)
    return "\n".join(lines) + "\n"


def figure_lines(roots: Sequence[Path], report: Path) -> list[str]:
    """The study's figures, each numbered with a caption saying what it shows and which analysis drew it."""
    from analysis.report import figure_caption

    figures = sorted(p for root in roots for p in Path(root).rglob("*.png"))
    if not figures:
        return []
    lines = ["", "## Figures", ""]
    for number, path in enumerate(figures, 1):
        shown = path.relative_to(report.parent) if path.is_relative_to(report.parent) else path
        sweep = path.relative_to(Path(next(r for r in roots if path.is_relative_to(r)))).parts[0]
        lines.append(f"- Figure {number} ({sweep}): {figure_caption(path)}. [{shown}]({shown})")
    return lines


FINDINGS = "FINDINGS.md"


def ledger_link(out: Path, findings_path: Path) -> str:
    """The ledger (claims.md in --out) as a link relative to the findings page."""
    return os.path.relpath(out / "claims.md", findings_path.parent)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m analysis.claims", description=__doc__.splitlines()[0])
    parser.add_argument("--runs", nargs="+", type=Path, default=[Path("results")])
    parser.add_argument("--out", type=Path, default=Path("reports/claims"))
    parser.add_argument("--no-estimates", action="store_true", help="skip the estimator (claims 10, 14, 15 not run)")
    parser.add_argument("--wandb-project", help="also log the ledger and retention tables to this W&B project")
    parser.add_argument("--wandb-group", default="study", help="the W&B group of the study (default: study)")
    parser.add_argument("--report", type=Path, default=None, help="also write the study report here (results/REPORT.md), "
                        "and the findings page FINDINGS.md beside it")
    parser.add_argument("--plan", action="store_true", help="print, claim by claim, the seeds and items to add; write nothing")
    parser.add_argument("--readme", type=Path, default=None,
                        help="also rewrite this README's findings block (between <!-- findings:begin/end --> markers) "
                             "with the findings page's summary (make claims passes README.md); default: no README")
    parser.add_argument("--earlier", type=Path, default=None,
                        help="an earlier study (e.g. results/study-2026-12): a claim --runs has not run shows its "
                             "verdict there, marked with its name (never mixed with --runs' records)")
    args = parser.parse_args(argv)
    if args.earlier is not None and not args.earlier.is_dir():
        return error(f"--earlier {args.earlier}: no such folder; name a committed study (e.g. results/study-2026-12)")
    try:
        evidence, verdicts = build(args.runs, args.earlier, estimates=not args.no_estimates)
    except HarnessError as err:
        return error(err)
    if args.plan:
        print(plan_text(verdicts), end="")
        return 0
    args.out.mkdir(parents=True, exist_ok=True)
    text = markdown(verdicts, evidence)
    (args.out / "claims.md").write_text(text)
    (args.out / "claims.json").write_text(json.dumps([asdict(v) for v in verdicts], indent=2) + "\n")
    if args.wandb_project:
        log_wandb(evidence, verdicts, args.wandb_project, args.wandb_group, args.out)
    if evidence.memory_frontier:
        write_frontier(evidence.memory_frontier, args.out)
    if args.report:  # claims 16-21's figures beside the ledger first: the report lists every figure under --runs
        from analysis.claims.plots_2025 import write_figures

        figures = args.out / "figures"
        for old in figures.glob("*.png"):
            old.unlink()  # a figure the records no longer support does not linger
        write_figures(evidence, figures)
        args.report.write_text(report_markdown(evidence, verdicts, args.runs, args.report))
        findings_path = args.report.parent / FINDINGS
        findings = findings_markdown(evidence, verdicts, args.runs, ledger_link(args.out, findings_path))
        findings_path.write_text(findings)
        if args.readme is not None:
            update_readme_block(args.readme, findings, findings_path)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
