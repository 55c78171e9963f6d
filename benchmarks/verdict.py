"""Time to a verdict: what a run costs beyond its training, and how fast it is scored (`make bench`, after the
throughput table; see benchmarks/bench.py's docstring for the cases).

- `run_overhead`: a default `python -m harness.run` timed from outside its process, start to exit;
- `sweep_overhead` / `sweep_slots`: the same ratio run by run inside one sweep process (`sweep_budget` names its runs);
- `run_eval_bench`: the harness scorer against a plain `model.generate` loop (benchmarks/eval_bench.py);
- `Limits` / `timed`: the matmul limit (bf16 where native, else fp32) read before and after every timed job; a
  spread over 20% marks the invocation too noisy to quote.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path
from typing import Any

from benchmarks.jobs import REPO, median, ratio_text, run_logged
from harness.runfolder import find_runs, read_record


def sweep_budget(name: str, batch_size: int, n_eval: int) -> list[str]:
    """The Hydra arguments that give the in-process sweep's runs their budget (`--sweep-budget`)."""
    return {"quick": ["train.max_steps=4", f"train.batch_size={batch_size}", f"task.n_eval={n_eval}"],
            "default": [],
            # a cell of the deciding study as it runs there (sweeps/study/fair-classify.yaml: minilm-l6, 300 steps,
            # fp32, 600 + 600 scored tweets, a validation curve every 50 steps): LoRA r=16 at a fixed rate, seeds only
            "study": ["--config-dir", str(REPO / "sweeps" / "study"), "--config-name", "fair-classify", "r=16",
                      "sweep.variants=null", "sweep.lr_search=0", "sweep.lr_halving=false", "sweep.selection_seed=null"],
            }[name]


def sweep_overhead(a: argparse.Namespace, work: Path, n_runs: int) -> dict[str, Any]:
    """A sweep of `n_runs` LoRA seeds in one process (Hydra's basic launcher runs a sweep's jobs in-process, so
    imports are paid once), with a base-score cache of its own: the first run computes the untuned model's scores,
    the others reuse them. `--sweep-budget quick` (4 steps, `--n-eval` rows) times the fixed costs only;
    `default` runs the default run's budget and evaluation, where the overhead ratio means what it does for a
    single default run (`sweep_slots`); `study` runs what `make sweep TASK=classify` runs for LoRA r=16 q,v
    (a cell of sweeps/study/fair-classify.yaml, on its own model), the budget the verdicts' comparisons train for."""
    runs, timings, log = work / "runs-sweep", work / "timings-sweep.json", work / "sweep.log"
    budget = sweep_budget(a.sweep_budget, a.batch_size, a.n_eval)
    model = [] if a.sweep_budget == "study" else [f"model={a.model}"]  # the study's cell names its own model
    cmd = [sys.executable, "-m", "benchmarks.timed_run", "-m", *budget, "method=lora", *model,
           "task=classify", f"seed={','.join(str(i) for i in range(n_runs))}", "tracking=none", f"paths.runs={runs}",
           f"paths.base_scores={work / 'base-scores-sweep'}", "rerun=true", *a.harness_args]
    rc = run_logged(cmd, {"BENCH_TIMINGS": str(timings)}, log)
    if rc != 0 or not timings.exists():
        return {"error": f"exit {rc}, see {log}"}
    return sweep_slots(json.loads(timings.read_text())) | {"budget": a.sweep_budget}


def sweep_slots(timings: dict[str, Any]) -> dict[str, Any]:
    """Where a sweep process's wall time went, run by run (`timings`: benchmarks.timed_run's report).

    A run's slot runs from the previous run's end (the process's start for the first, so it carries the
    interpreter and imports) to its own end: the launcher's work between runs is in it, and the slots add up to
    the process's wall time less its exit. Per run: overhead ratio (slot - training) / training, and the fixed
    overhead, its own wall time less training and scoring (evaluate + forgetting probe). For the whole sweep:
    (process wall - all training) / all training, and the median ratio of the runs after the first (imports
    paid, base scores cached: what each further seed costs)."""
    per_run, previous_end = [], 0.0
    for r in timings["runs"]:
        train = r["train_runtime_s"] or 0.0
        scoring = r["phases_s"].get("evaluate", 0.0) + r["phases_s"].get("forgetting_probe", 0.0)
        slot = r["ended_s"] - previous_end
        previous_end = r["ended_s"]
        per_run.append({"slot_s": slot, "wall_s": r["wall_s"], "train_runtime_s": train, "scoring_s": scoring,
                        "overhead_ratio": (slot - train) / train if train else None, "base_cached": r.get("base_cached"),
                        "fixed_overhead_s": r["wall_s"] - train - scoring, "phases_s": r["phases_s"]})
    trained = sum(r["train_runtime_s"] for r in per_run)
    return {"runs": per_run, "process_wall_s": timings["wall_s"],
            "process_start_and_imports_s": timings["python_startup_s"] + timings["phases_s"].get("imports", 0.0),
            "overhead_ratio": (timings["wall_s"] - trained) / trained if trained else None,
            "later_runs_overhead_ratio_median": median([r["overhead_ratio"] for r in per_run[1:]]),
            "fixed_overhead_s_median": median([r["fixed_overhead_s"] for r in per_run])}


def run_overhead(a: argparse.Namespace, work: Path, tag: str, base_scores: Path, seed: int,
                 extra: tuple[str, ...] = ()) -> dict[str, Any]:
    """A default run timed from outside its process, start to exit, against its own training time."""
    runs, log = work / f"runs-{tag}", work / f"{tag}.log"
    cmd = [sys.executable, "-m", "harness.run", f"model={a.model}", "tracking=none", f"paths.runs={runs}",
           f"paths.base_scores={base_scores}", f"seed={seed}", "rerun=true", *extra, *a.harness_args]
    t0 = time.perf_counter()
    rc = run_logged(cmd, {}, log)
    wall = time.perf_counter() - t0
    results = [read_record(f) for f in find_runs([runs])] if runs.is_dir() else []
    if rc != 0 or not results:
        return {"error": f"exit {rc}, see {log}", "log_tail": log.read_text()[-2000:]}
    r = results[0]
    train = r["train_runtime_s"]
    return {"tag": tag, "wall_s": round(wall, 2), "train_runtime_s": train, "overhead_ratio": (wall - train) / train,
            "base_cached": r.get("base_cached"), "base_eval_s": r.get("base_eval_s"), "eval_s": r.get("eval_s"),
            "final_eval_s": r.get("final_eval_s"), "final_probe_s": r.get("final_probe_s"),
            "startup_s": r.get("startup_s"), "model_load_s": r.get("model_load_s"), "extra": list(extra)}


def run_eval_bench(a: argparse.Namespace, work: Path) -> list[dict[str, Any]] | dict[str, Any]:
    out, log = work / "eval.json", work / "eval.log"
    rc = run_logged([sys.executable, "-m", "benchmarks.eval_bench", f"--model={a.model}", f"--tasks={a.eval_tasks}",
                     f"--n={a.eval_n}", f"--out={out}"], {}, log)
    if rc != 0 or not out.exists():
        return {"error": f"exit {rc}, see {log}", "log_tail": log.read_text()[-2000:]}
    return json.loads(out.read_text())


class Limits:
    """The matmul limit read around every timed job: its spread says whether the invocation was quiet. bf16 where
    this machine computes it natively, else fp32 (an emulated bf16 2048^3 product takes about a minute)."""

    def __init__(self) -> None:
        self.readings: list[dict[str, Any]] = []

    def read(self, label: str) -> None:
        import torch

        from benchmarks.matmul import matmul_gflops
        from harness.config import native_bf16

        dtype = torch.bfloat16 if native_bf16() else torch.float32
        rate = matmul_gflops(2048, 2048, 2048, dtype, repeats=3)["gflops_median"]
        self.readings.append({"at": label, "gflops": rate, "dtype": str(dtype).removeprefix("torch.")})

    def summary(self) -> dict[str, Any]:
        rates = [r["gflops"] for r in self.readings]
        if not rates:
            return {}
        spread = (max(rates) - min(rates)) / statistics.median(rates)
        return {"readings": self.readings, "median": statistics.median(rates), "min": min(rates), "max": max(rates),
                "spread": spread, "too_noisy": spread > 0.20}


def timed(limits: Limits, label: str, fn, *args):
    limits.read(f"before {label}")
    try:
        return fn(*args)
    finally:
        limits.read(f"after {label}")


def verdict_markdown(overhead: list[dict[str, Any]], evaluation, limit: dict[str, Any]) -> str:
    lines = ["", "## Time to a verdict", ""]
    if limit:
        dtype = {"bfloat16": "bf16", "float32": "fp32"}.get(limit["readings"][0].get("dtype", "bfloat16"), "bf16")
        lines.append(f"Matmul limit around the timed jobs ({dtype} 2048^3, {len(limit['readings'])} readings): median "
                     f"{limit['median']:.0f} GFLOP/s, {limit['min']:.0f}-{limit['max']:.0f}, spread {limit['spread']:.0%}"
                     + (" - TOO NOISY TO QUOTE (> 20%)." if limit["too_noisy"] else "."))
    if overhead:
        lines += ["", "| default run | wall s | training s | overhead ratio (target <= 0.15 warm) | base cached | "
                  "start-up s | final scoring s (probe s) | validation s |", "|---|---:|---:|---:|---|---:|---:|---:|"]
        for r in overhead:
            if "error" in r:
                lines.append(f"| {r['case']} | error: {r['error']} | | | | | | |")
                continue
            lines.append(f"| {r['case']} | {r['wall_s']:.1f} | {r['train_runtime_s']:.1f} | {r['overhead_ratio']:.2f} | "
                         f"{r['base_cached']} | {r.get('startup_s')} | {r['final_eval_s']} ({r.get('final_probe_s')}) | "
                         f"{r['eval_s']} |")
    rows = evaluation if isinstance(evaluation, list) else []
    if rows:
        lines += ["", "| evaluation | examples | harness ex/s | plain ex/s | harness gen tok/s | plain gen tok/s | "
                  "speedup (target >= 1.5x) | same answers | shared prefix: speedup, same answers |",
                  "|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
        for r in rows:
            lines.append(f"| {r['task']} ({r['precision']}, batch {r['batch_size']}) | {r['examples']} | "
                         f"{r['harness_examples_per_s']:.2f} | {r['plain_examples_per_s']:.2f} | "
                         f"{r['harness_generated_tokens_per_s']:.0f} | {r['plain_generated_tokens_per_s']:.0f} | "
                         f"{r['speedup']:.2f}x | {r['same_answers']}/{r['examples']} | "
                         f"{r['prefix_speedup']:.2f}x, {r['same_answers_unshared']}/{r['examples']} |")
    elif evaluation:
        lines.append(f"evaluation benchmark: {evaluation.get('error')}")
    return "\n".join(lines) + "\n"


def sweep_markdown(sweep: dict[str, Any] | None) -> list[str]:
    """The in-process sweep's lines of the results table, run by run."""
    lines: list[str] = []
    if sweep and "runs" in sweep:
        lines += ["", f"In one sweep process ({len(sweep['runs'])} LoRA seeds, budget `{sweep.get('budget', 'quick')}`, "
                  f"its own base-score cache; interpreter and imports paid once: {sweep['process_start_and_imports_s']:.1f} s): "
                  f"overhead ratio {ratio_text(sweep['overhead_ratio'])} for the whole process ({sweep['process_wall_s']:.1f} s), "
                  f"{ratio_text(sweep['later_runs_overhead_ratio_median'])} the median of the runs after the first.", "",
                  "| run | slot s | training s | overhead ratio | base cached | scoring s | fixed overhead s |",
                  "|---:|---:|---:|---:|---|---:|---:|"]
        lines += [f"| {i} | {r['slot_s']:.1f} | {r['train_runtime_s']:.1f} | {ratio_text(r['overhead_ratio'])} | "
                  f"{r['base_cached']} | {r['scoring_s']:.1f} | {r['fixed_overhead_s']:.1f} |" for i, r in enumerate(sweep["runs"])]
        lines.append("Slot: from the previous run's end (the process's start for the first) to this run's end; "
                     "fixed overhead: the run's own time less training and scoring.")
    return lines
