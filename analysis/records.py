"""Copy a study's records out of its run folders, without weights, so they can be committed and re-analysed.

    python -m analysis.records runs/study results/study       # what `make study` does after each sweep
    python -m analysis.records --restore results/study/fair-classify/runs runs/study/fair-classify   # and before it

For every run folder under SRC (a folder holding result.json) it copies the record and the small per-run files
the analyses write (`RECORD_FILES`: the per-item records `items.jsonl.gz` among them) to the same relative place under DST; adapters, models, checkpoints and logs
stay behind. Existing copies are replaced, so re-running after more runs finish brings DST up to date.

`--restore` goes the other way, for a fresh clone: the committed records of a sweep are copied into its run folder
where no run of that id is there yet, so the sweeper counts them as done and trains only the rest (a `paused`
search run restored without its checkpoint trains from step 0 to its next rung: the same run, recomputed).
"""

from __future__ import annotations

import argparse
import shutil
import sys
from pathlib import Path

from harness.exits import error
from harness.items import ITEMS_FILE
from harness.provenance import DIFF_FILE
from harness.runfolder import RESULT_FILE, find_runs

RECORD_FILES = (RESULT_FILE, ITEMS_FILE, DIFF_FILE, "intruders.csv", "merge.json", "serve_bench.json")  # DIFF_FILE: to re-run it
MAX_BYTES = 2 * 2**20  # a record bigger than this is not a record


def copy_records(src: Path, dst: Path, only_missing: bool = False) -> int:
    """Copy every run folder's records from `src` to `dst`; returns how many run folders were copied. With
    `only_missing`, a run folder that already holds a record at `dst` is left as it is."""
    copied = 0
    for folder in find_runs([src]):
        target = Path(dst) / folder.relative_to(src)
        if only_missing and (target / RESULT_FILE).exists():
            continue
        target.mkdir(parents=True, exist_ok=True)
        for name in RECORD_FILES:
            path = folder / name
            if path.is_file() and path.stat().st_size <= MAX_BYTES:
                shutil.copy2(path, target / name)
        copied += 1
    return copied


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m analysis.records", description=__doc__.splitlines()[0])
    parser.add_argument("src", type=Path, help="a folder of run folders, e.g. runs/study")
    parser.add_argument("dst", type=Path, help="where the records go, e.g. results/study")
    parser.add_argument("--restore", action="store_true", help="committed records back into a run folder: only the "
                        "runs missing there; a missing SRC restores nothing")
    args = parser.parse_args(argv)
    if args.restore:
        n = copy_records(args.src, args.dst, only_missing=True) if args.src.is_dir() else 0
        print(f"restored the records of {n} run folders from {args.src} to {args.dst}")
        return 0
    if not args.src.is_dir():
        return error(f"{args.src} is not a folder; pass the folder the study's runs went to, e.g. runs/study")
    n = copy_records(args.src, args.dst)
    print(f"copied the records of {n} run folders from {args.src} to {args.dst}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
