"""What a study's sweeps cost, read from their records: runs by status, recorded wall time, and the overhead of the
reporting runs as they ran inside their sweep process (the study's own figure beside `make bench`'s).

    python -m analysis.study_time results/study                 # every sweep folder under it (<sweep>/runs)
    python -m analysis.study_time results/study --out results/study/budget/wall-time.md

- **Recorded wall**: each run's `started_at` .. `finished_at`. A search run that halving paused and resumed keeps only
  its last process segment, so a sweep's sum is a lower bound while it holds resumed runs (the table counts them).
- **Overhead in the sweep process**: for consecutive reporting-seed runs of one process (the same `pid`; Hydra's
  basic launcher runs a sweep's jobs in-process), the slot from the previous run's end to this run's end, less the
  run's `train_runtime_s`, over `train_runtime_s`: what `make bench --sweep-budget study` measures from outside,
  here over the study's real order (variants x seeds, the untuned model's scores cached per seed and shared by the
  variants). The first run of a process has no slot (its start-up is the process's) and is left out.
"""

from __future__ import annotations

import argparse
import statistics
import sys
from datetime import datetime
from pathlib import Path
from typing import Any

from harness.exits import error
from harness.runfolder import find_runs, read_record
from harness.sweep_plan import SEARCH_PROTOCOLS
from harness.sweep_progress import run_wall_s


def sweep_folders(root: Path) -> list[Path]:
    """The sweeps under a study folder (each `<sweep>/runs`; `budget/` holds calibrations, not a sweep), or `root`
    itself when it holds runs directly."""
    found = sorted(p for p in root.glob("*/runs") if p.is_dir() and p.parent.name != "budget")
    return found or [root]


def process_overheads(records: list[dict[str, Any]]) -> list[float]:
    """(slot - training) / training for each run that follows another of its process (see the module docstring)."""
    timed = sorted((datetime.fromisoformat(r["finished_at"]), r) for r in records
                   if r.get("finished_at") and r.get("train_runtime_s") and r.get("pid") is not None)
    ratios = []
    for (end_before, before), (end, run) in zip(timed, timed[1:]):
        if run["pid"] != before["pid"]:
            continue
        slot = (end - end_before).total_seconds()
        wall = run_wall_s(run) or slot
        if slot > wall + 60:  # a gap longer than the run's own start-up: the process waited (a stop), not a slot
            continue
        ratios.append((slot - run["train_runtime_s"]) / run["train_runtime_s"])
    return ratios


def sweep_row(folder: Path) -> dict[str, Any]:
    records = [r for r in (read_record(f) for f in find_runs([folder])) if r]
    status = [r.get("status") for r in records]
    reporting = [r for r in records if r.get("status") == "ok" and r.get("lr_protocol") not in SEARCH_PROTOCOLS]
    walls = [w for w in map(run_wall_s, records) if w]
    report_walls = [w for w in map(run_wall_s, reporting) if w]
    ratios = process_overheads(reporting)
    cached = [r for r in reporting if r.get("base_cached")]
    return {
        "sweep": folder.parent.name if folder.name == "runs" else folder.name,
        "runs": len(records), "ok": status.count("ok"), "paused": status.count("paused"),
        "other": len(records) - status.count("ok") - status.count("paused"),
        "resumed": sum(1 for r in records if r.get("resumed_from")),
        "recorded_h": sum(walls) / 3600, "reporting": len(reporting),
        "reporting_min": statistics.median(report_walls) / 60 if report_walls else None,
        "overhead": statistics.median(ratios) if ratios else None, "overhead_n": len(ratios),
        "base_cached": f"{len(cached)}/{len(reporting)}",
    }


def markdown(rows: list[dict[str, Any]]) -> str:
    def num(value: float | None, fmt: str) -> str:
        return "—" if value is None else format(value, fmt)

    lines = ["| sweep | runs | ok | paused | other | resumed | recorded wall h | reporting runs | median min each | "
             "overhead in process (median, n) | untuned scores cached |",
             "|---|---:|---:|---:|---:|---:|---:|---:|---:|---|---|"]
    for r in rows:
        lines.append(f"| {r['sweep']} | {r['runs']} | {r['ok']} | {r['paused']} | {r['other']} | {r['resumed']} | "
                     f"{r['recorded_h']:.2f} | {r['reporting']} | {num(r['reporting_min'], '.1f')} | "
                     f"{num(r['overhead'], '.2f')} ({r['overhead_n']}) | {r['base_cached']} |")
    lines += ["", "Recorded wall: each run's last process segment (a lower bound for a sweep with resumed runs). "
              "Overhead: (slot - train_runtime_s) / train_runtime_s over consecutive reporting runs of one sweep "
              "process (python -m analysis.study_time; target 0.15, issue 41)."]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m analysis.study_time", description=__doc__.split("\n\n")[0])
    parser.add_argument("root", type=Path, help="a study's records (results/study) or one sweep's runs folder")
    parser.add_argument("--out", type=Path, help="also write the table to this markdown file")
    a = parser.parse_args(argv)
    if not a.root.is_dir():
        return error(f"{a.root} is not a folder; pass a study's records, e.g. results/study")
    text = markdown([sweep_row(f) for f in sweep_folders(a.root)])
    print(text, end="")
    if a.out:
        a.out.parent.mkdir(parents=True, exist_ok=True)
        a.out.write_text(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
