"""`python -m harness.run` with stopwatches: the same run, plus where its wall time went.

    BENCH_TIMINGS=/tmp/t.json python -m benchmarks.timed_run method=lora tracking=none train.max_steps=20
    BENCH_TIMINGS=/tmp/t.json python -m benchmarks.timed_run -m method=lora seed=0,1,2 ...   # per-run in a sweep

The harness code is untouched; this wrapper only wraps the functions `harness.pipeline` calls (model load,
data preparation, tokenisation, evaluation, saving) with timers and adds a per-step timer to the Trainer. The
phases are written as JSON to $BENCH_TIMINGS when the process exits, whatever the run's outcome.
"""

from __future__ import annotations

import atexit
import os
import time

import psutil

T_INTERPRETER = psutil.Process().create_time()  # process start (before Python's own start-up)
T_WRAPPER = time.time()
_t = time.perf_counter()

from benchmarks.common import PhaseClock, StepTimer, write_json  # noqa: E402  (imports transformers)

clock = PhaseClock()
step_timer = StepTimer()
per_run: list[dict] = []  # one entry per run of the process (a Hydra --multirun sweep runs them in-process)
import harness.pipeline as pipeline  # noqa: E402  (torch, transformers, peft, datasets, evaluate)
from harness import run as harness_run  # noqa: E402
from harness.tasks import base as task_base  # noqa: E402
from transformers import Trainer  # noqa: E402

clock.add("imports", time.perf_counter() - _t)


def _instrument() -> None:
    for name, phase in [("load_tokenizer", "model_load"), ("load_model", "model_load"),
                        ("model_fingerprint", "fingerprints"), ("apply_method", "apply_method"),
                        ("save_atomically", "save"), ("probe_sample", "forgetting_probe"),
                        ("probe_loss", "forgetting_probe"), ("get_task", "data_prep")]:
        if hasattr(pipeline, name):
            setattr(pipeline, name, clock.wrap(phase, getattr(pipeline, name)))
    for name, phase in [("splits", "data_prep"), ("fingerprint", "fingerprints"),
                        ("train_dataset", "tokenise"), ("predict", "evaluate"), ("score", "evaluate")]:
        setattr(task_base.Task, name, clock.wrap(phase, getattr(task_base.Task, name)))

    build = pipeline.build_trainer

    def build_with_timer(model, tokenizer, train_dataset, args, kind, callbacks, *rest, **kwargs):
        return build(model, tokenizer, train_dataset, args, kind, [*callbacks, step_timer], *rest, **kwargs)

    pipeline.build_trainer = clock.wrap("trainer_setup", build_with_timer)
    Trainer.train = clock.wrap("train_call", Trainer.train)  # optimizer set-up + loop + Trainer bookkeeping
    execute = pipeline.execute

    def timed_execute(*args, **kwargs):
        before, t0 = dict(clock.totals), time.perf_counter()
        step_timer.times.clear()
        result = {}
        try:
            result = execute(*args, **kwargs)
            return result
        finally:
            phases = {k: round(v - before.get(k, 0.0), 3) for k, v in clock.totals.items()}
            # `ended_s`, seconds since the process started: a sweep's runs and the launcher's work between them add
            # up to the process's wall time (benchmarks.verdict.sweep_slots)
            per_run.append({"run_id": result.get("run_id"), "wall_s": time.perf_counter() - t0,
                            "ended_s": time.time() - T_INTERPRETER,
                            "train_runtime_s": result.get("train_runtime_s"), "base_cached": result.get("base_cached"),
                            "phases_s": phases, **step_timer.summary()})

    pipeline.execute = timed_execute
    harness_run.main_body = clock.wrap("main_body", harness_run.main_body)  # validate + execute


def _report() -> None:
    out = os.environ.get("BENCH_TIMINGS")
    if not out:
        return
    now = time.time()
    write_json(out, {
        "wall_s": now - T_INTERPRETER,
        "python_startup_s": T_WRAPPER - T_INTERPRETER,
        "phases_s": {k: round(v, 3) for k, v in clock.totals.items()},
        "runs": per_run,
        "step_s_median": per_run[-1]["step_s_median"] if per_run else None,  # the (last) run's steps
    })


if __name__ == "__main__":
    _instrument()
    atexit.register(_report)
    harness_run.cli()
