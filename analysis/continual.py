"""Continual learning, read from the stages' run folders: after each stage, every task learned so far, forgetting
of general text since the pre-trained base, and the intruder count of the whole chain's update.

    make sweep TASK=continual
    python -m analysis.intruder runs/continual --out reports/continual/intruders      # optional: intruder counts
    python -m analysis.continual runs/continual --out reports/continual

A stage's record (harness/lineage.py) holds its own task's score and `earlier_tasks`: each earlier stage's task
re-scored after this stage, beside the score that stage reached. Intruder counts come from each run folder's
`intruders.csv` (written by `analysis.intruder`; k=10, at every epsilon), so they cover W - W0 for the chain up
to that stage. Writes `continual.csv` (one row per stage and task scored), `continual_stages.csv` (one row per
stage), `continual.md` and `continual_forgetting.png`.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pandas as pd

from harness.exits import error
from harness.errors import HarnessError
from harness.runfolder import find_runs, read_record

INTRUDER_EPSILONS = ("0.5", "0.7", "0.9")


def variant_label(record: dict[str, Any]) -> str:
    r = record.get("r")
    return record["method"] + (f" r={r}" if r is not None else "") + f" lr={record.get('lr'):.3g}"


def stage_records(paths: Sequence[Path]) -> list[tuple[Path, dict[str, Any]]]:
    """(folder, record) of every finished run under `paths` that belongs to a chain (a root with children or a
    stage with `init_from`)."""
    folders = find_runs(paths)
    records = [(f, r) for f in folders if (r := read_record(f)) and r.get("status") == "ok"]
    parents = {(r.get("init_from") or {}).get("run_id") for _, r in records}
    chained = [(f, r) for f, r in records if r.get("init_from") or r.get("run_id") in parents]
    if not chained:
        raise HarnessError("no continual stage among the folders given (no run with init_from); run "
                           "`make sweep TASK=continual` first")
    return chained


def intruder_counts(run_dir: Path) -> dict[str, Any]:
    table = run_dir / "intruders.csv"
    if not table.exists():
        return {f"intruders_eps{e}": None for e in INTRUDER_EPSILONS} | {"rel_update_mean": None}
    frame = pd.read_csv(table)
    frame = frame[frame["compared"]] if "compared" in frame else frame
    return {f"intruders_eps{e}": int(frame[f"eps_{e}"].sum()) for e in INTRUDER_EPSILONS} | {
        "rel_update_mean": float(frame["rel_update"].mean())}


def tables(paths: Sequence[Path]) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(per stage and task scored, per stage)."""
    scores, stages = [], []
    for folder, record in stage_records(paths):
        init = record.get("init_from") or {}
        chain = init.get("chain") or []
        root = chain[0]["run_id"] if chain else record["run_id"]
        stage = len(chain) + 1
        variant = variant_label(record)
        common = {"chain": root, "variant": variant, "stage": stage, "stage_task": record["task"],
                  "run_id": record["run_id"], "seed": record.get("seed")}
        scores.append(common | {"task": record["task"], "task_stage": stage, "score": record["score"],
                                "score_at_stage": record["score"], "base_score": record.get("base_score"),
                                "retained": 1.0})
        for j, earlier in enumerate(record.get("earlier_tasks") or [], 1):
            scores.append(common | {"task": earlier["task"], "task_stage": j, "score": earlier["score_now"],
                                    "score_at_stage": earlier["score_at_stage"], "base_score": earlier.get("base_score"),
                                    "retained": earlier.get("retained")})
        total = record.get("forgetting_total", record.get("forgetting") if stage == 1 else None)
        stages.append(common | {"score": record["score"], "forgetting_stage": record.get("forgetting"),
                                "forgetting_total": total, "forgetting_probe": record.get("forgetting_probe", "lm-loss"),
                                "earlier_mean_retained": _mean([e.get("retained") for e in record.get("earlier_tasks") or []]),
                                **intruder_counts(folder)})
    # a chain is named by its variant at stage 1 (stages may change the method's rate; the root fixes the chain)
    score_table = pd.DataFrame(scores).sort_values(["variant", "seed", "stage", "task_stage"]).reset_index(drop=True)
    stage_table = pd.DataFrame(stages).sort_values(["variant", "seed", "stage"]).reset_index(drop=True)
    return score_table, stage_table


def _mean(values: list[float | None]) -> float | None:
    kept = [v for v in values if v is not None]
    return sum(kept) / len(kept) if kept else None


def markdown(score_table: pd.DataFrame, stage_table: pd.DataFrame) -> str:
    pivot = score_table.pivot_table(index=["variant", "seed", "stage", "stage_task"], columns="task", values="score")
    order = list(dict.fromkeys(score_table.sort_values("task_stage")["task"]))
    pivot = pivot[[t for t in order if t in pivot.columns]].reset_index()
    merged = pivot.merge(stage_table[["variant", "seed", "stage", "forgetting_total", "earlier_mean_retained",
                                      "intruders_eps0.5", "intruders_eps0.7", "rel_update_mean"]],
                         on=["variant", "seed", "stage"])
    lines = ["| variant | seed | stage | trained on | " + " | ".join(order) +
             " | earlier tasks retained | forgetting (total) | intruders eps 0.5 / 0.7 | rel. update |",
             "|" + "---|" * (8 + len(order))]
    for _, row in merged.iterrows():
        cells = [_fmt(row.get(t)) for t in order]
        intr = "-" if pd.isna(row["intruders_eps0.5"]) else f"{int(row['intruders_eps0.5'])} / {int(row['intruders_eps0.7'])}"
        lines.append(f"| {row['variant']} | {row['seed']} | {row['stage']} | {row['stage_task']} | " + " | ".join(cells)
                     + f" | {_fmt(row['earlier_mean_retained'], pct=True)} | {_fmt(row['forgetting_total'])} | {intr} | "
                     + f"{_fmt(row['rel_update_mean'])} |")
    return "\n".join(lines) + "\n"


def _fmt(value: Any, pct: bool = False) -> str:
    if value is None or (isinstance(value, float) and pd.isna(value)):
        return "-"
    return f"{100 * value:.1f}%" if pct else f"{value:.4f}"


def plot(score_table: pd.DataFrame, stage_table: pd.DataFrame, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    tasks = list(dict.fromkeys(score_table.sort_values("task_stage")["task"]))
    fig, axes = plt.subplots(1, len(tasks) + 1, figsize=(4 * (len(tasks) + 1), 3.4))
    for ax, task in zip(axes, tasks):
        for variant, rows in score_table[score_table["task"] == task].groupby("variant"):
            mean = rows.groupby("stage")["score"].mean()
            ax.plot(mean.index, mean.values, marker="o", label=variant)
        ax.set(title=f"{task} score after each stage", xlabel="stage", ylabel="score")
    ax = axes[-1]
    for variant, rows in stage_table.groupby("variant"):
        mean = rows.groupby("stage")["forgetting_total"].mean()
        ax.plot(mean.index, mean.values, marker="o", label=variant)
    ax.set(title="forgetting of general text (since base)", xlabel="stage", ylabel="loss increase")
    axes[0].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m analysis.continual", description=__doc__.splitlines()[0])
    parser.add_argument("runs", nargs="+", type=Path, help="run folders, or folders of them (e.g. runs/continual)")
    parser.add_argument("--out", type=Path, default=Path("reports/continual"))
    args = parser.parse_args(argv)
    try:
        score_table, stage_table = tables(args.runs)
    except HarnessError as err:
        return error(err)
    args.out.mkdir(parents=True, exist_ok=True)
    score_table.to_csv(args.out / "continual.csv", index=False)
    stage_table.to_csv(args.out / "continual_stages.csv", index=False)
    text = markdown(score_table, stage_table)
    (args.out / "continual.md").write_text(text)
    plot(score_table, stage_table, args.out / "continual_forgetting.png")
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
