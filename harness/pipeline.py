"""The body of one run as named phases, in the order they happen (harness/phases/); `harness.run` wraps it with
config checks and fault handling.

    load -> untuned_scores -> method -> train -> scores -> earlier_stages -> save

Each phase returns its part of the record (harness/results.py FIELDS names the phase that writes each key); the
driver times every phase into `phases_s`, writes the record after each phase on the main rank, and stops at a
terminal status (failed, diverged, paused at a rung) or when this rank's part is done."""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any, Callable

from harness.config import RunSpec
from harness.phases import PHASES, RunContext
from harness.results import RESULT_FILE, Status, now, write_json_atomic
from harness.units import format_bytes

log = logging.getLogger("harness")
# Called with each finished run's record (benchmarks.timed_run collects the per-run timings through it).
RUN_OBSERVERS: list[Callable[[dict[str, Any]], None]] = []


def execute(spec: RunSpec, run_dir: Path) -> dict[str, Any]:
    """Run the phases in order; return the record (also written to `run_dir/result.json` on the main rank)."""
    ctx = RunContext.start(spec, run_dir)
    for name, phase in PHASES:
        t0 = time.perf_counter()
        part = phase(ctx)
        ctx.timings[name] = time.perf_counter() - t0
        ctx.record |= part
        ctx.record.setdefault("status", Status.RUNNING.value)
        ctx.record.setdefault("reason", None)
        if ctx.ending:
            status, reason = ctx.ending
            ctx.record |= {"status": status.value, "reason": reason, "finished_at": now()}
        ctx.record["phases_s"] = ctx.phases_s()
        if ctx.main:
            write_json_atomic(run_dir / RESULT_FILE, ctx.record)
        if ctx.ending or ctx.leave:
            break
    if not ctx.leave:
        finish(ctx)
    for observer in RUN_OBSERVERS:
        observer(ctx.record)
    return ctx.record


def finish(ctx: RunContext) -> None:
    """Close the tracking run; a run that got to its save also logs its samples and prints its summary."""
    record = ctx.record
    if ctx.tracker is None:
        return
    if "saved_to" in record:
        ctx.tracker.log_table("samples", ["input", "reference", "output"],
                              [[s["input"], s["reference"], s["output"]] for s in record["samples"]])
    ctx.tracker.finish(record)
    if "saved_to" in record:
        print_summary(record, ctx.run_dir)


def print_summary(result: dict[str, Any], run_dir: Path) -> None:
    rank = f" r={result['r']} alpha={result['alpha']}" if result["r"] is not None else ""
    targets = f" targets={result['targets']}" if result["targets"] else ""
    lines = [
        f"run        {result['run_id']}  ({run_dir})",
        f"method     {result['method']}{rank}{targets}  on {result['model']} / {result['task']}",
        f"trainable  {result['params_trainable']:,} of {result['params_total']:,} params ({result['trainable_pct']:.3f}%)",
        f"memory     peak {format_bytes(result['peak_mem_bytes']) or 'n/a'} ({result['mem_kind']})",
        f"speed      {result['train_tokens_per_s']:.0f} tokens/s (non-padding), {result['train_runtime_s']:.1f} s training",
        f"saved      {format_bytes(result['adapter_bytes']) or 'n/a'} ({result['saved_to']}/)",
        f"score      {result['primary_metric']} {result['score']:.3f}  vs base {result['base_score']:.3f}"
        f"  (validation {result['val_score']:.3f})",
        f"budget     {result['train_steps']} steps = {result['train_epochs']:.2f} epochs of {result['train_rows']} rows",
    ]
    if result.get("status") != Status.OK.value:
        lines.append(f"status     {result['status']}: {result['reason']}")
    if not _in_sweep():  # a sweep prints its own table; these pointers are for the one-off run
        lines += next_steps(run_dir)
    print("\n".join(lines), flush=True)
    logging.getLogger("harness.log_file").info("summary\n%s", "\n".join(lines))


def _in_sweep() -> bool:
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    return HydraConfig.initialized() and HydraConfig.get().mode == RunMode.MULTIRUN


def next_steps(run_dir: Path) -> list[str]:
    """Where to look next after a one-off run: its folder, its report, three commands to try."""
    report = f"reports/{run_dir.name}"
    return [
        f"look at    {run_dir}/result.json (every measurement) and run.log",
        f"report     python -m analysis.report --runs {run_dir} --out {report}  ->  open {report}/report.html",
        "next       python -m harness.run method=full          # the reference: full fine-tuning, same task",
        "           make sweep TASK=classify                   # a grid of runs, resumable, with a summary table",
        "           make report                                # tables, figures and report.html over runs/",
    ]
