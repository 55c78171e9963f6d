"""Training throughput of the harness against a plain transformers + peft script, and this machine's matmul limit.

    make bench                                             # every method below, 2 interleaved repeats
    python -m benchmarks.bench --methods full,lora --steps 12 --repeats 3

For each method, on the same bundled model, data, batch size and steps, it runs the harness
(`python -m harness.run` under benchmarks.timed_run, which only adds stopwatches) and the plain reference
(benchmarks/plain_reference.py), alternating which goes first in each repeat, and takes medians over repeats:
the machine is shared, so a ratio is only meaningful when both sides ran side by side. The whole benchmark holds
`--lock` (an flock file, as the rest of this project's heavy jobs do), so no other locked job runs in between.

Training FLOPs per token (matmuls only; attention scores and element-wise work not counted):
  full FT: 6 N                           (forward 2N, backward 2N for activations + 2N for weights)
  frozen base (LoRA, QLoRA, DoRA, IA3):   4 N + 2 N_trainable
N counts every parameter once (the tied embedding / lm_head matrix once: its matmul is the lm_head). MFU divides
that model count by the measured matmul rate for the dtype the matmuls run in. The harness computes logits only
where a label is (train.labelled_logits_only), so it executes fewer FLOPs than the model count; the "executed"
column (HFU) counts the lm_head only on labelled positions.

Time to a verdict, in the same invocation:
- evaluation: the harness scorer against a plain one-prompt-at-a-time `model.generate` loop over the same prompts
  (benchmarks/eval_bench.py): examples/s, generated tokens/s, and the ratio (target >= 1.5x);
- per-run overhead ratio = (wall time - training time) / training time of a default run
  (`python -m harness.run`, timed from outside the process, start to exit): cold (its cell's base scores not
  cached yet), warm (the next seed: base scores cached; target <= 0.15), and warm with periodic validation on;
  `--warm-budgets train.epochs=1` adds warm runs at other budgets (the overhead is fixed, the ratio is not);
- the same ratio inside one sweep process (`--sweep-runs` LoRA seeds, imports paid once, base scores computed by
  the first run and reused by the rest): per run and for the whole process; `--sweep-budget default` gives its
  runs the default run's budget and evaluation, `quick` (the default) only times the fixed costs.
- The matmul limit is read before and after every timed job (bf16 2048^3); an invocation whose readings spread by
  more than 20% is flagged too noisy to quote.

Writes benchmarks/results/bench-<time>.{json,md} and latest.{json,md}.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from harness.runfolder import find_runs, read_record

REPO = Path(__file__).resolve().parent.parent
RESULTS = REPO / "benchmarks" / "results"
METHODS = ("full", "lora", "qlora", "dora", "ia3")
ENV = {"HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false", "WANDB_SILENT": "true"}


def hold_lock(path: str):
    """Block until the shared flock is ours; it is released when the process exits."""
    import fcntl

    handle = open(path, "a")  # noqa: SIM115 - kept open for the life of the process
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        print(f"bench: waiting for {path} (another heavy job holds it)", flush=True)
        fcntl.flock(handle, fcntl.LOCK_EX)
    return handle


def _run(cmd: list[str], env: dict[str, str], log: Path) -> int:
    with open(log, "w") as fh:
        return subprocess.run(cmd, cwd=REPO, env={**os.environ, **ENV, **env}, stdout=fh, stderr=subprocess.STDOUT).returncode


def run_harness(method: str, a: argparse.Namespace, work: Path, tag: str) -> dict[str, Any]:
    """One harness run: its result.json fields plus the wrapper's phase timings."""
    runs, timings, log = work / f"runs-{tag}", work / f"timings-{tag}.json", work / f"{tag}.log"
    cmd = [sys.executable, "-m", "benchmarks.timed_run", f"method={method}", f"model={a.model}", "task=classify",
           f"train.max_steps={a.steps}", f"train.batch_size={a.batch_size}", f"task.n_eval={a.n_eval}",
           f"r={a.r}", "targets=qv", "tracking=none", f"paths.runs={runs}", "rerun=true", "train.logging_steps=5",
           *a.harness_args]
    rc = _run(cmd, {"BENCH_TIMINGS": str(timings)}, log)
    results = [read_record(f) for f in find_runs([runs])] if runs.is_dir() else []
    if rc != 0 or not results:
        return {"error": f"exit {rc}, see {log}", "log_tail": log.read_text()[-2000:]}
    result = results[0]
    times = json.loads(timings.read_text()) if timings.exists() else {}
    phases = times.get("phases_s", {})
    scoring = phases.get("evaluate", 0.0) + phases.get("forgetting_probe", 0.0)
    return {
        "train_tokens_per_s": result["train_tokens_per_s"], "train_runtime_s": result["train_runtime_s"],
        "train_tokens": result["train_tokens"], "peak_mem_bytes": result["peak_mem_bytes"],
        "params_total": result["params_total"], "params_trainable": result["params_trainable"],
        "precision": result["precision"], "score": result.get("score"), "train_loss": result.get("train_loss"),
        "step_s_median": times.get("step_s_median"), "wall_s": times.get("wall_s"), "phases_s": phases,
        # what a run costs besides training and scoring: start-up, imports, load, data, tokenise, set-up, save
        "fixed_overhead_s": times["wall_s"] - result["train_runtime_s"] - scoring if times else None,
        "scoring_s": scoring,
    }


def sweep_overhead(a: argparse.Namespace, work: Path, n_runs: int) -> dict[str, Any]:
    """A sweep of `n_runs` LoRA seeds in one process (Hydra's basic launcher runs a sweep's jobs in-process, so
    imports are paid once), with a base-score cache of its own: the first run computes the untuned model's scores,
    the others reuse them. `--sweep-budget quick` (4 steps, `--n-eval` rows) times the fixed costs only;
    `default` runs the default run's budget and evaluation, where the overhead ratio means what it does for a
    single default run (`sweep_slots`)."""
    runs, timings, log = work / "runs-sweep", work / "timings-sweep.json", work / "sweep.log"
    budget = ["train.max_steps=4", f"train.batch_size={a.batch_size}", f"task.n_eval={a.n_eval}"] \
        if a.sweep_budget == "quick" else []
    cmd = [sys.executable, "-m", "benchmarks.timed_run", "-m", "method=lora", f"model={a.model}", "task=classify",
           f"seed={','.join(str(i) for i in range(n_runs))}", *budget, "tracking=none", f"paths.runs={runs}",
           f"paths.base_scores={work / 'base-scores-sweep'}", "rerun=true", *a.harness_args]
    rc = _run(cmd, {"BENCH_TIMINGS": str(timings)}, log)
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
            "later_runs_overhead_ratio_median": _median([r["overhead_ratio"] for r in per_run[1:]]),
            "fixed_overhead_s_median": _median([r["fixed_overhead_s"] for r in per_run])}


def run_overhead(a: argparse.Namespace, work: Path, tag: str, base_scores: Path, seed: int,
                 extra: tuple[str, ...] = ()) -> dict[str, Any]:
    """A default run timed from outside its process, start to exit, against its own training time."""
    runs, log = work / f"runs-{tag}", work / f"{tag}.log"
    cmd = [sys.executable, "-m", "harness.run", f"model={a.model}", "tracking=none", f"paths.runs={runs}",
           f"paths.base_scores={base_scores}", f"seed={seed}", "rerun=true", *extra, *a.harness_args]
    t0 = time.perf_counter()
    rc = _run(cmd, {}, log)
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
    rc = _run([sys.executable, "-m", "benchmarks.eval_bench", f"--model={a.model}", f"--tasks={a.eval_tasks}",
               f"--n={a.eval_n}", f"--out={out}"], {}, log)
    if rc != 0 or not out.exists():
        return {"error": f"exit {rc}, see {log}", "log_tail": log.read_text()[-2000:]}
    return json.loads(out.read_text())


class Limits:
    """The bf16 matmul limit read around every timed job: its spread says whether the invocation was quiet."""

    def __init__(self) -> None:
        self.readings: list[dict[str, Any]] = []

    def read(self, label: str) -> None:
        import torch

        from benchmarks.matmul import matmul_gflops

        rate = matmul_gflops(2048, 2048, 2048, torch.bfloat16, repeats=3)["gflops_median"]
        self.readings.append({"at": label, "gflops": rate})

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


def run_reference(method: str, a: argparse.Namespace, work: Path, tag: str) -> dict[str, Any]:
    out, log = work / f"ref-{tag}.json", work / f"{tag}.log"
    cmd = [sys.executable, "-m", "benchmarks.plain_reference", f"--method={method}", f"--model={a.model}",
           f"--steps={a.steps}", f"--batch-size={a.batch_size}", f"--r={a.r}", "--targets=q_proj,v_proj", f"--out={out}"]
    rc = _run(cmd, {}, log)
    if rc != 0 or not out.exists():
        return {"error": f"exit {rc}, see {log}", "log_tail": log.read_text()[-2000:]}
    return json.loads(out.read_text())


def labelled_fraction(model: str, batch_size: int) -> float:
    """Share of tokens whose next token carries a label (where the harness computes logits)."""
    from benchmarks.plain_reference import harness_examples

    _, _, feats = harness_examples(1200, 256, model)
    labelled = sum(sum(1 for t in lab[1:] if t != -100) for lab in feats["labels"])
    return labelled / sum(len(ids) for ids in feats["input_ids"])


def flops_per_token(total: int, trainable: int, head: int, labelled: float) -> dict[str, float]:
    full = trainable >= total
    model = 6 * total if full else 4 * total + 2 * trainable
    head_per_token = 6 * head if full else 4 * head  # the lm_head's share of `model`
    return {"model": model, "executed": model - head_per_token * (1 - labelled), "convention": "6N" if full else "4N+2Nt"}


def _median(values: list[float | None]) -> float | None:
    values = [v for v in values if v is not None]
    return statistics.median(values) if values else None


def summarise(raw: dict[str, Any], matmul: dict[str, Any], labelled: float, head: int) -> list[dict[str, Any]]:
    bf16 = matmul["rates"]["bf16"]["2048x2048x2048"]["gflops_median"] * 1e9
    fp32 = matmul["rates"]["fp32"]["2048x2048x2048"]["gflops_median"] * 1e9
    rows = []
    for method, sides in raw.items():
        ref_tps = _median([r.get("train_tokens_per_s") for r in sides.get("reference", [])])
        for side in ("harness", "reference"):
            runs = [r for r in sides.get(side, []) if "error" not in r]
            if not runs:
                continue
            tps = _median([r["train_tokens_per_s"] for r in runs])
            h = next((r for r in sides.get("harness", []) if "params_total" in r), None)
            total = h["params_total"] if h else runs[0].get("params_total")
            trainable = runs[0]["params_trainable"] if side == "harness" or not h else h["params_trainable"]
            fl = flops_per_token(total, trainable, head, labelled if side == "harness" else 1.0)
            rate = fp32 if side == "reference" and method != "qlora" else bf16
            rows.append({
                "method": method, "side": side, "repeats": len(runs), "tokens_per_s": tps,
                "step_s_median": _median([r.get("step_s_median") for r in runs]),
                "peak_mem_gb": _median([r.get("peak_mem_bytes") for r in runs]) / 1e9,
                "precision": runs[0].get("precision") or runs[0].get("dtype"),
                "flops_convention": fl["convention"], "model_gflops_per_s": tps * fl["model"] / 1e9,
                "mfu_vs_bf16": tps * fl["model"] / bf16, "hfu_vs_bf16": tps * fl["executed"] / bf16,
                "mfu_vs_own_dtype": tps * fl["model"] / rate,
                "speedup_vs_reference": tps / ref_tps if ref_tps else None,
                "fixed_overhead_s": _median([r.get("fixed_overhead_s") for r in runs]),
                "train_loss": _median([r.get("train_loss") for r in runs]),
            })
    return rows


def _ratio(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.2f}"


def markdown(rows: list[dict[str, Any]], matmul: dict[str, Any], meta: dict[str, Any], sweep: dict | None) -> str:
    r = matmul["rates"]
    lines = [
        f"# Training throughput ({meta['model']}, task=classify, batch {meta['batch_size']}, {meta['steps']} steps, "
        f"{meta['repeats']} interleaved repeats, medians)", "",
        f"Matmul limit (torch.matmul 2048^3, median): bf16 {r['bf16']['2048x2048x2048']['gflops_median']:.0f} GFLOP/s, "
        f"fp32 {r['fp32']['2048x2048x2048']['gflops_median']:.0f} GFLOP/s; model-shaped bf16 "
        + ", ".join(f"{k} {v['gflops_median']:.0f}" for k, v in r["bf16"].items() if k.startswith("model")) + ".",
        f"FLOPs/token: full FT 6N, frozen base 4N+2N_trainable. Labelled positions: {meta['labelled_fraction']:.1%} "
        "of tokens (the harness computes logits only there; HFU counts that).", "",
        "| method | side | precision | tokens/s | step s | peak GB | vs reference | MFU (bf16 rate) | HFU (bf16 rate) | "
        "MFU (own dtype) | fixed overhead s |",
        "|---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    f = lambda v, spec: "n/a" if v is None else format(v, spec)  # noqa: E731
    for x in rows:
        lines.append(
            f"| {x['method']} | {x['side']} | {x['precision']} | {f(x['tokens_per_s'], '.0f')} | "
            f"{f(x['step_s_median'], '.2f')} | {f(x['peak_mem_gb'], '.2f')} | {f(x['speedup_vs_reference'], '.2f') + ('x' if x['speedup_vs_reference'] else '')} | "
            f"{f(x['mfu_vs_bf16'], '.1%')} | {f(x['hfu_vs_bf16'], '.1%')} | {f(x['mfu_vs_own_dtype'], '.1%')} | "
            f"{f(x['fixed_overhead_s'], '.1f')} |")
    lines += ["", "Fixed overhead = process wall time - training loop - scoring (evaluate + forgetting probe): start-up, "
              "imports, data, model load, tokenise, Trainer set-up, save."]
    if sweep and "runs" in sweep:
        lines += ["", f"In one sweep process ({len(sweep['runs'])} LoRA seeds, budget `{sweep.get('budget', 'quick')}`, "
                  f"its own base-score cache; interpreter and imports paid once: {sweep['process_start_and_imports_s']:.1f} s): "
                  f"overhead ratio {_ratio(sweep['overhead_ratio'])} for the whole process ({sweep['process_wall_s']:.1f} s), "
                  f"{_ratio(sweep['later_runs_overhead_ratio_median'])} the median of the runs after the first.", "",
                  "| run | slot s | training s | overhead ratio | base cached | scoring s | fixed overhead s |",
                  "|---:|---:|---:|---:|---|---:|---:|"]
        lines += [f"| {i} | {r['slot_s']:.1f} | {r['train_runtime_s']:.1f} | {_ratio(r['overhead_ratio'])} | "
                  f"{r['base_cached']} | {r['scoring_s']:.1f} | {r['fixed_overhead_s']:.1f} |" for i, r in enumerate(sweep["runs"])]
        lines.append("Slot: from the previous run's end (the process's start for the first) to this run's end; "
                     "fixed overhead: the run's own time less training and scoring.")
    return "\n".join(lines) + "\n"


def verdict_markdown(overhead: list[dict[str, Any]], evaluation, limit: dict[str, Any]) -> str:
    lines = ["", "## Time to a verdict", ""]
    if limit:
        lines.append(f"Matmul limit around the timed jobs (bf16 2048^3, {len(limit['readings'])} readings): median "
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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    available = [m for m in METHODS if (REPO / "conf" / "method" / f"{m}.yaml").exists()]
    parser.add_argument("--methods", default=",".join(available))
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--steps", type=int, default=16)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--r", type=int, default=16)
    parser.add_argument("--n-eval", type=int, default=30, help="harness evaluation rows (scoring is not timed as training)")
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--matmul-repeats", type=int, default=10)
    parser.add_argument("--no-reference", action="store_true")
    parser.add_argument("--sweep-runs", type=int, default=3, help="runs of the in-process sweep that times per-run overhead; 0 skips")
    parser.add_argument("--sweep-budget", choices=("quick", "default"), default="quick",
                        help="the in-process sweep's runs: quick (4 steps, --n-eval rows: fixed costs) or the default "
                             "run's budget and evaluation (overhead ratios comparable with a default run's)")
    parser.add_argument("--overhead", action=argparse.BooleanOptionalAction, default=True,
                        help="time default runs from outside (cold, warm, warm with validation)")
    parser.add_argument("--warm-budgets", default="",
                        help="more warm default runs at other budgets, e.g. 'train.epochs=1' (comma-separated overrides);"
                             " the overhead is fixed per run, so its ratio falls as training grows")
    parser.add_argument("--eval-tasks", default="extract,classify", help="tasks of the evaluation benchmark; '' skips")
    parser.add_argument("--eval-n", type=int, default=48)
    parser.add_argument("--lock", default="/tmp/harness-cpu.lock", help="flock file for heavy runs; '' for none")
    parser.add_argument("--out", type=Path, default=RESULTS)
    parser.add_argument("harness_args", nargs="*", help="extra harness overrides, e.g. train.padding_free=false")
    a = parser.parse_args()
    lock = hold_lock(a.lock) if a.lock else None  # noqa: F841 - held until exit
    work = Path(tempfile.mkdtemp(prefix="harness-bench-"))
    methods = [m for m in a.methods.split(",") if m]
    print(f"bench: methods {methods}, {a.steps} steps x batch {a.batch_size}, {a.repeats} repeats; logs in {work}", flush=True)

    mm = subprocess.run([sys.executable, "-m", "benchmarks.matmul", f"--repeats={a.matmul_repeats}"],
                        cwd=REPO, capture_output=True, text=True, check=True)
    matmul = json.loads(mm.stdout)
    limits = Limits()
    raw: dict[str, dict[str, list]] = {m: {"harness": [], "reference": []} for m in methods if m}
    for rep in range(a.repeats):
        for method in methods:
            order = ["harness", "reference"] if rep % 2 == 0 else ["reference", "harness"]
            for side in order:
                if side == "reference" and a.no_reference:
                    continue
                t0 = time.time()
                fn = run_harness if side == "harness" else run_reference
                res = timed(limits, f"{side} {method} {rep}", fn, method, a, work, f"{side}-{method}-{rep}")
                raw[method][side].append(res)
                note = res.get("error") or f"{res['train_tokens_per_s']:.0f} tokens/s"
                print(f"  [{rep}] {method:6s} {side:9s} {note}  ({time.time() - t0:.0f} s)", flush=True)

    sweep = timed(limits, "sweep", sweep_overhead, a, work, a.sweep_runs) if a.sweep_runs else None
    if sweep:
        print("  sweep   " + (sweep.get("error") or f"overhead ratio {_ratio(sweep['overhead_ratio'])} for the process, "
              f"{_ratio(sweep['later_runs_overhead_ratio_median'])} median after the first run; per-run fixed overhead "
              f"{sweep['fixed_overhead_s_median']:.1f} s"), flush=True)
    overhead = []
    if a.overhead:
        cache = work / "base-scores"  # a fresh cache: the first run is cold, the next seeds find its scores
        cases = [("cold", 0, ()), ("warm", 1, ()), ("warm, validation every 20 steps", 2, ("train.eval_every=20",))]
        cases += [(f"warm, {budget}", 3 + i, (budget,)) for i, budget in enumerate(b for b in a.warm_budgets.split(",") if b)]
        for label, seed, extra in cases:
            res = timed(limits, f"overhead {label}", run_overhead, a, work, f"overhead-{seed}", cache, seed, extra)
            overhead.append(res | {"case": label})
            print(f"  run     {label}: " + (res.get("error") or f"overhead ratio {res['overhead_ratio']:.2f} "
                  f"({res['wall_s']:.0f} s wall, {res['train_runtime_s']:.0f} s training)"), flush=True)
    evaluation = timed(limits, "evaluation", run_eval_bench, a, work) if a.eval_tasks else []
    for row in evaluation if isinstance(evaluation, list) else [evaluation]:
        print("  eval    " + (row.get("error") or f"{row['task']}: {row['speedup']:.2f}x the plain generate loop"), flush=True)
    head = 49152 * 576 if a.model == "smollm2-135m" else 0  # lm_head (tied embedding) parameters
    meta = {"model": a.model, "steps": a.steps, "batch_size": a.batch_size, "repeats": a.repeats,
            "labelled_fraction": labelled_fraction(a.model, a.batch_size), "harness_args": a.harness_args,
            "lm_head_params": head, "cpu_count": os.cpu_count(), "time": time.strftime("%Y-%m-%d %H:%M:%S")}
    rows = summarise(raw, matmul, meta["labelled_fraction"], head)
    a.out.mkdir(parents=True, exist_ok=True)
    stamp = time.strftime("%Y%m%d-%H%M%S")
    limit = limits.summary()
    payload = {"meta": meta, "matmul": matmul, "rows": rows, "sweep": sweep, "raw": raw, "overhead": overhead,
               "evaluation": evaluation, "limit_readings": limit}
    md = markdown(rows, matmul, meta, sweep) + verdict_markdown(overhead, evaluation, limit)
    for name in (f"bench-{stamp}", "latest"):
        (a.out / f"{name}.json").write_text(json.dumps(payload, indent=2, default=str))
        (a.out / f"{name}.md").write_text(md)
    print(md)


if __name__ == "__main__":
    main()
