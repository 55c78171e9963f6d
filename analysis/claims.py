"""The claims ledger: gather the evidence from a study's records, apply every claim's rule
(analysis/claim_rules.py), and write the ledger, the study report and the W&B tables.

    python -m analysis.claims --runs results/study --out results/study/claims --report results/REPORT.md
    make claims                                                       # the same
    python -m analysis.claims --runs results/study --wandb-project peft-harness --wandb-group study
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

import pandas as pd

import analysis.claim_rules_2025  # noqa: F401  (registers claims 16-21 in the ledger)
from analysis.claim_rules import (INCONCLUSIVE, NOT_RUN, REFUTED, SUPPORTED, Evidence, Verdict, ledger)
from harness.cli import error
from harness.errors import HarnessError


# ---- gathering and writing -----------------------------------------------------------------------------------

ESTIMATES = {
    "lora": ["model=llama-3.1-8b", "method=lora", "r=16", "targets=qv"],
    "ia3": ["model=llama-3.1-8b", "method=ia3", "targets=ia3"],
    "7b-full-bf16": ["model=llama-2-7b", "method=full", "train.precision=bf16"],
    "7b-lora": ["model=llama-2-7b", "method=lora", "r=16", "targets=qv"],
    "7b-qlora": ["model=llama-2-7b", "method=qlora", "r=16", "targets=qv"],
    "70b-full": ["model=llama-3.1-70b", "method=full"],
}


def estimator_rows() -> dict[str, dict[str, Any]]:
    from harness.estimate import estimate_overrides

    return {name: estimate_overrides(overrides, device="cuda").as_dict() for name, overrides in ESTIMATES.items()}


def _glob(roots: Sequence[Path], name: str) -> list[Path]:
    return sorted(p for root in roots for p in Path(root).rglob(name))


def gather(roots: Sequence[Path], estimates: bool = True) -> Evidence:
    from analysis import tables
    from analysis.runs import load_folders

    df = load_folders(roots)
    ev = Evidence(retention=tables.retention(df), runs=tables.at_selected_lr(df), records=df)
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
        for model, corr in by_model.items():
            link = (corr.get("forgetting") or {}) | {"model": model, "source": str(folder)}
            if link.get("n") and (model not in best or rank(link) > rank(best[model])):
                best[model] = link
    return [best[m] for m in sorted(best)]


def markdown(verdicts: list[Verdict]) -> str:
    counts = {k: sum(v.verdict == k for v in verdicts) for k in (SUPPORTED, REFUTED, INCONCLUSIVE, NOT_RUN)}
    lines = ["# Claims ledger", "", ", ".join(f"{n} {k}" for k, n in counts.items()) + ".", "",
             "| # | claim | verdict | estimate | evidence / missing |", "|---:|---|---|---|---|"]
    for v in verdicts:
        detail = "<br>".join(v.evidence) + (("<br>" if v.evidence else "") + f"missing: {v.missing}" if v.missing else "")
        lines.append(f"| {v.claim} | {v.text} | **{v.verdict}** | {v.estimate} | {detail} |")
    lines += ["", "## Rules", ""] + [f"{v.claim}. {v.rule}" for v in verdicts]
    return "\n".join(lines) + "\n"


def log_wandb(ev: Evidence, verdicts: list[Verdict], project: str, group: str, out: Path) -> str | None:
    """The ledger and the fair retention rows as W&B tables (`claims_ledger`, `retention`) in one analysis run of
    the study's group; analysis.wandb_report shows both. Offline without a login; returns the run's path."""
    import wandb

    from harness.tracking import resolve_mode

    run = wandb.init(project=project, group=group, name="claims-ledger", job_type="analysis", dir=str(out),
                     mode=resolve_mode("auto"), reinit="finish_previous",
                     settings=wandb.Settings(silent=True, console="off", save_code=False))
    ledger_columns = ["claim", "text", "verdict", "estimate", "evidence", "missing", "rule"]
    run.log({"claims_ledger": wandb.Table(columns=ledger_columns, data=[
        [v.claim, v.text, v.verdict, v.estimate, "; ".join(v.evidence), v.missing, v.rule] for v in verdicts])})
    fair = ev.fair()
    columns = [c for c in ("task", "model", "label", "selected_lr", "n_seeds", "score_mean", "score_low", "score_high",
                           "retention_mean", "retention_low", "retention_high", "grid_edge") if c in fair]
    run.log({"retention": wandb.Table(columns=columns, data=fair[columns].astype(object).where(fair[columns].notna(), None).values.tolist())})
    run.summary.update({f"verdict/{v.claim}": v.verdict for v in verdicts})
    path = getattr(run, "path", None)
    run.finish()
    return "/".join(path) if isinstance(path, (list, tuple)) else path


def report_markdown(ev: Evidence, verdicts: list[Verdict], roots: Sequence[Path], report: Path) -> str:
    """results/REPORT.md: the ledger, retention with intervals (fair rows), the estimator's memory rows and the
    study's figures, all from the records under `roots`."""
    lines = [f"# What the measurements say (rebuilt by `make claims` from {', '.join(map(str, roots))})", "",
             markdown(verdicts).replace("# Claims ledger", "## Claims ledger", 1), "## Retention at selected learning rates", "",
             "Fair rows (>= 3 seeds, >= 2 learning rates tried), test score mean with its 95% t-interval, retention vs "
             "full FT with Fieller's 95% interval.", "",
             "| task | model | variant | selected lr | lrs tried | seeds | test score | retention | note |",
             "|---|---|---|---:|---|---:|---|---|---|"]
    for _, r in ev.fair().sort_values(["task", "model", "method", "r"], na_position="first").iterrows():
        score = f"{r['score_mean']:.4f} [{r['score_low']:.4f}, {r['score_high']:.4f}]" if "score_mean" in r else ""
        ret = f"{r['retention_mean']:.1f}%" + ("" if pd.isna(r["retention_low"]) else f" [{r['retention_low']:.1f}, {r['retention_high']:.1f}]")
        lines.append(f"| {r['task']} | {r['model']} | {r['label']} | {r.get('selected_lr', '')} | {r['lrs_tried']} | "
                     f"{int(r['n_seeds'])} | {score} | {ret} | {r.get('note') or ''} |")
    if ev.estimates:
        lines += ["", "## Memory (estimated: harness.estimate, CUDA, batch 8 x 256, AdamW)", "",
                  "| preset | overrides | trainable | peak GB | adapter / model on disk |", "|---|---|---:|---:|---:|"]
        for name, est in ev.estimates.items():
            lines.append(f"| {name} | `{' '.join(ESTIMATES[name])}` | {est['params_trainable']:,} | "
                         f"{est['memory']['peak'] / 1e9:.1f} | {est['disk_bytes'] / 1e6:,.0f} MB |")
    figures = sorted(p for root in roots for p in Path(root).rglob("*.png"))
    if figures:
        lines += ["", "## Figures", ""] + [f"- [{p.relative_to(report.parent) if p.is_relative_to(report.parent) else p}]"
                                           f"({p.relative_to(report.parent) if p.is_relative_to(report.parent) else p})"
                                           for p in figures]
    return "\n".join(lines) + "\n"


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m analysis.claims", description=__doc__.splitlines()[0])
    parser.add_argument("--runs", nargs="+", type=Path, default=[Path("results")])
    parser.add_argument("--out", type=Path, default=Path("reports/claims"))
    parser.add_argument("--no-estimates", action="store_true", help="skip the estimator (claims 10, 14, 15 not run)")
    parser.add_argument("--wandb-project", help="also log the ledger and retention tables to this W&B project")
    parser.add_argument("--wandb-group", default="study", help="the W&B group of the study (default: study)")
    parser.add_argument("--report", type=Path, default=None, help="also write the study report here (results/REPORT.md)")
    args = parser.parse_args(argv)
    try:
        evidence = gather(args.runs, estimates=not args.no_estimates)
        verdicts = ledger(evidence)
    except HarnessError as err:
        return error(err)
    args.out.mkdir(parents=True, exist_ok=True)
    text = markdown(verdicts)
    (args.out / "claims.md").write_text(text)
    (args.out / "claims.json").write_text(json.dumps([asdict(v) for v in verdicts], indent=2) + "\n")
    if args.wandb_project:
        log_wandb(evidence, verdicts, args.wandb_project, args.wandb_group, args.out)
    if args.report:
        args.report.write_text(report_markdown(evidence, verdicts, args.runs, args.report))
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
