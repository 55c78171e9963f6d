"""How long a sweep will take: an estimate before it starts and a progress line (tqdm) across its runs.

The estimate is the median wall time of the runs of the same plan that already finished (their records'
`started_at` .. `finished_at`) times the runs left; a sweep with none finished says so, and tqdm's ETA takes over
after its first run. Runs go to the launcher in batches small enough for the line to move: one run at a time for
Hydra's basic launcher (it runs them one after another anyway), `n_jobs` at a time for joblib; launchers that
queue jobs elsewhere (submitit, SLURM) get the whole list at once, as before.
"""

from __future__ import annotations

import contextlib
import io
import logging
import statistics
import sys
from datetime import datetime
from typing import Any, Callable, Iterator

from tqdm.auto import tqdm

from harness.runfolder import read_record

log = logging.getLogger("harness.sweeper")


def progress_batch_size(launcher: Any, n_runs: int) -> int:
    """Runs per launcher call: small enough that progress shows between calls, large enough to keep parallelism."""
    target = str(launcher.get("_target_", ""))
    if "BasicLauncher" in target:
        return 1
    if "joblib" in target.lower():
        n_jobs = launcher.get("n_jobs")
        return max(int(n_jobs), 1) if isinstance(n_jobs, int) and n_jobs > 0 else max(n_runs, 1)
    return max(n_runs, 1)


def run_wall_s(record: dict[str, Any] | None) -> float | None:
    """Seconds from a record's start to its end, when it finished."""
    try:
        started, finished = (datetime.fromisoformat(record[k]) for k in ("started_at", "finished_at"))
    except (TypeError, KeyError, ValueError):
        return None
    return (finished - started).total_seconds() if finished >= started else None


def wall_time_estimate(rows: list[dict[str, Any]], n_todo: int) -> str:
    """One line: the runs to go and, from the plan's finished runs, about how long they will take."""
    walls = [w for w in (run_wall_s(read_record(r["run_dir"])) for r in rows if r["done"]) if w]
    if not walls:
        return f"{n_todo} runs to go; no finished run to estimate from yet (the progress line's ETA follows the first)"
    each = statistics.median(walls)
    return (f"{n_todo} runs to go, about {tqdm.format_interval(each * n_todo)} one after another "
            f"(median {tqdm.format_interval(each)} per run over {len(walls)} finished runs of this sweep)")


@contextlib.contextmanager
def sweep_progress(total: int) -> Iterator[Callable[[int], None]]:
    """Yields `advance(n)`. On a terminal a tqdm bar; otherwise tqdm's line (runs done, elapsed, ETA) in the log
    after each batch, so a log file gets one line per batch rather than a bar's carriage returns."""
    on_terminal = sys.stderr.isatty()
    bar = tqdm(total=total, unit="run", desc="sweep", file=sys.stderr if on_terminal else io.StringIO(),
               disable=total == 0)

    def advance(n: int) -> None:
        bar.update(n)
        if not on_terminal and total:
            log.info("sweep progress: %s", str(bar))  # formatted now, not when the record is emitted

    try:
        yield advance
    finally:
        bar.close()
