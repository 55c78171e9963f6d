"""`python -m harness.run` with the process's own stopwatch: the same run, plus where its wall time went.

    BENCH_TIMINGS=/tmp/t.json python -m benchmarks.timed_run method=lora tracking=none train.max_steps=20
    BENCH_TIMINGS=/tmp/t.json python -m benchmarks.timed_run -m method=lora seed=0,1,2 ...   # per-run in a sweep

Nothing in the harness is patched: every run times its own phases into its record's `phases_s` (the named
phases of harness/pipeline.py and the finer stopwatches inside them: model_load, data_prep, fingerprints,
tokenise, trainer_setup, train_call, evaluate, forgetting_probe, save_weights, train_step_median). This wrapper
adds what a run cannot see (interpreter start-up, imports, the time between runs of a sweep) and writes it all
as JSON to $BENCH_TIMINGS when the process exits, whatever the run's outcome.
"""

from __future__ import annotations

import atexit
import os
import time

import psutil

T_INTERPRETER = psutil.Process().create_time()  # process start (before Python's own start-up)
T_WRAPPER = time.time()
_t = time.perf_counter()

from benchmarks.common import write_json  # noqa: E402
from harness import pipeline  # noqa: E402  (torch, transformers, peft, datasets, evaluate)
from harness import run as harness_run  # noqa: E402

IMPORTS_S = time.perf_counter() - _t
per_run: list[dict] = []  # one entry per run of the process (a Hydra --multirun sweep runs them in-process)
TOP_LEVEL = {name for name, _ in pipeline.PHASES}


def collect(record: dict) -> None:
    """A finished run's timings, from its record (registered with harness.pipeline.RUN_OBSERVERS)."""
    phases = dict(record.get("phases_s") or {})
    # `ended_s`, seconds since the process started: a sweep's runs and the launcher's work between them add up to
    # the process's wall time (benchmarks.verdict.sweep_slots)
    per_run.append({"run_id": record.get("run_id"), "ended_s": time.time() - T_INTERPRETER,
                    "wall_s": sum(v for k, v in phases.items() if k in TOP_LEVEL),
                    "train_runtime_s": record.get("train_runtime_s"), "base_cached": record.get("base_cached"),
                    "phases_s": phases, "step_s_median": phases.get("train_step_median")})


def _report() -> None:
    out = os.environ.get("BENCH_TIMINGS")
    if not out:
        return
    totals: dict[str, float] = {"imports": round(IMPORTS_S, 3)}
    for run in per_run:
        for name, seconds in run["phases_s"].items():
            if name != "train_step_median":
                totals[name] = round(totals.get(name, 0.0) + seconds, 3)
    write_json(out, {
        "wall_s": time.time() - T_INTERPRETER,
        "python_startup_s": T_WRAPPER - T_INTERPRETER,
        "phases_s": totals,
        "runs": per_run,
        "step_s_median": per_run[-1]["step_s_median"] if per_run else None,  # the (last) run's steps
    })


if __name__ == "__main__":
    pipeline.RUN_OBSERVERS.append(collect)
    atexit.register(_report)
    harness_run.cli()
