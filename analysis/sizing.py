"""Sizing a cell from calibration runs: how many test items bring gain retention's item interval to a target.

    python -m analysis.sizing runs/budget-style --reference full --target 2

Reads the finished runs of one folder (calibration runs: one seed each, one task and model), pairs them on their
shared test items (`items.jsonl.gz`, harness/items.py) and prints, per run, its test score, the cell's floor (the
best trivial baseline on validation, as the records name it), the gain over the floor with an items-only 95%
interval, and for each run that is not the reference its gain retention against the reference (normally full FT)
with an items-only interval and the test items that would bring that half-width to `--target` points.

The items part only: issue 41 asks that test-item sampling alone contribute at most +-2 points; seeds add their own
variance on top. The projection assumes the half-width falls as 1 / sqrt(items) (the items are exchangeable draws
of the task's pool); it is an estimate from a pilot, labelled as such wherever it is quoted.
"""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path
import numpy as np

from analysis import bootstrap as boot
from analysis.gain import items_of
from harness.items import floor_who, read_items
from harness.runfolder import RESULT_FILE


def load_arms(folder: Path) -> tuple[dict[str, boot.Arm], str, str]:
    """({label: arm} for every finished run with per-item records, plus "floor"; the metric; the floor's name)."""
    arms: dict[str, boot.Arm] = {}
    metric = floor_name = ""
    for record_file in sorted(folder.glob(f"*/{RESULT_FILE}")):
        record = json.loads(record_file.read_text())
        rows = read_items(record_file.parent)
        tuned = items_of(rows, "tuned")
        if record.get("status") != "ok" or tuned is None:
            continue
        metric, floor_name = record["primary_metric"], record.get("floor_name") or "base"
        label = record["method"] + (f" r={record['r']}" if record.get("r") and record["method"] != "full" else "")
        ids, stats = tuned
        arms[label] = boot.Arm(metric, (0,), np.array([record["score"]]), ids, stats[None])
        if "floor" not in arms:
            fids, fstats = items_of(rows, floor_who(floor_name))
            arms["floor"] = boot.Arm(metric, (), np.array([float(record["floor_score"])]), fids, fstats[None])
    if len(arms) < 2:
        raise SystemExit(f"error: {folder} holds no finished run with per-item records; run the calibration first")
    return arms, metric, floor_name


def items_needed(half_width: float, n_items: int, target: float) -> int | None:
    """Items for a half-width of `target` when it falls as 1 / sqrt(items) from `half_width` at `n_items`."""
    if not (half_width > 0 and math.isfinite(half_width)):
        return None
    return math.ceil(n_items * (half_width / target) ** 2)


def sizing(folder: Path, reference: str, target_points: float) -> list[str]:
    arms, metric, floor_name = load_arms(folder)
    res = boot.resample(arms, levels=("items",))
    lines = [f"{folder}: {res.n_items} shared test items, metric {metric}, floor {floor_name} "
             f"{res.point['floor']:.4f} (items-only 95% intervals, one seed per run)"]
    for name in (n for n in arms if n != "floor"):
        gain = boot.estimate(res, lambda m, f: m - f, name, "floor")
        lines.append(f"  {name}: {metric} {res.point[name]:.4f}, gain over the floor {gain[0]:+.4f} "
                     f"[{gain[1]:+.4f}, {gain[2]:+.4f}]")
    if reference not in arms:
        lines.append(f"  no run labelled {reference!r}: no retention")
        return lines
    for name in (n for n in arms if n not in ("floor", reference)):
        point, low, high = boot.estimate(res, boot.gain_ratio, name, reference, "floor")
        half = 100 * (high - low) / 2
        need = items_needed(half, res.n_items, target_points)
        lines.append(f"  {name} / {reference}: gain retention {100 * point:.1f}% [{100 * low:.1f}, {100 * high:.1f}], "
                     f"items half-width {half:.1f} points; +-{target_points:g} points would need ~{need} test items "
                     f"(estimate)")
    return lines


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m analysis.sizing", description=__doc__.split("\n\n")[0])
    parser.add_argument("folder", type=Path, help="a folder of calibration runs (one seed each)")
    parser.add_argument("--reference", default="full", help="the run retention is measured against (default full)")
    parser.add_argument("--target", type=float, default=2.0, help="items-only half-width to reach, in points")
    args = parser.parse_args(argv)
    if not args.folder.is_dir():
        parser.error(f"{args.folder} is not a folder; pass the folder that holds the calibration runs")
    print("\n".join(sizing(args.folder, args.reference, args.target)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
