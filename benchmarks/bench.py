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
  runs the default run's budget and evaluation, `study` a cell of the deciding study (sweeps/study/fair-classify.yaml),
  `quick` (the default) only times the fixed costs.
- The matmul limit is read before and after every timed job (bf16 2048^3); an invocation whose readings spread by
  more than 20% is flagged too noisy to quote.

Writes benchmarks/results/<date>T<time>_<host>_bench.{json,md} (benchmarks/stamp.py), committed; the docs page of
latest results is regenerated from it by `python -m benchmarks.docs_page`.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from benchmarks.jobs import REPO, hold_lock, median, ratio_text, run_logged
from benchmarks.matmul import peak
from benchmarks.stamp import write_stamped
from benchmarks.verdict import (Limits, run_eval_bench, run_overhead, sweep_markdown, sweep_overhead, timed,
                                verdict_markdown)
from harness.runfolder import find_runs, read_record

RESULTS = REPO / "benchmarks" / "results"
METHODS = ("full", "lora", "qlora", "dora", "ia3")


def run_harness(method: str, a: argparse.Namespace, work: Path, tag: str) -> dict[str, Any]:
    """One harness run: its result.json fields plus the wrapper's phase timings."""
    runs, timings, log = work / f"runs-{tag}", work / f"timings-{tag}.json", work / f"{tag}.log"
    cmd = [sys.executable, "-m", "benchmarks.timed_run", f"method={method}", f"model={a.model}", "task=classify",
           f"train.max_steps={a.steps}", f"train.batch_size={a.batch_size}", f"task.n_eval={a.n_eval}",
           f"r={a.r}", "targets=qv", "tracking=none", f"paths.runs={runs}", "rerun=true", "train.logging_steps=5",
           *a.harness_args]
    rc = run_logged(cmd, {"BENCH_TIMINGS": str(timings)}, log)
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


def run_reference(method: str, a: argparse.Namespace, work: Path, tag: str) -> dict[str, Any]:
    out, log = work / f"ref-{tag}.json", work / f"{tag}.log"
    cmd = [sys.executable, "-m", "benchmarks.plain_reference", f"--method={method}", f"--model={a.model}",
           f"--steps={a.steps}", f"--batch-size={a.batch_size}", f"--r={a.r}", "--targets=q_proj,v_proj", f"--out={out}"]
    rc = run_logged(cmd, {}, log)
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


def summarise(raw: dict[str, Any], matmul: dict[str, Any], labelled: float, head: int) -> list[dict[str, Any]]:
    bf16, fp32 = peak(matmul, "bf16") * 1e9, peak(matmul, "fp32") * 1e9
    rows = []
    for method, sides in raw.items():
        ref_tps = median([r.get("train_tokens_per_s") for r in sides.get("reference", [])])
        for side in ("harness", "reference"):
            runs = [r for r in sides.get(side, []) if "error" not in r]
            if not runs:
                continue
            tps = median([r["train_tokens_per_s"] for r in runs])
            h = next((r for r in sides.get("harness", []) if "params_total" in r), None)
            total = h["params_total"] if h else runs[0].get("params_total")
            trainable = runs[0]["params_trainable"] if side == "harness" or not h else h["params_trainable"]
            fl = flops_per_token(total, trainable, head, labelled if side == "harness" else 1.0)
            rate = fp32 if side == "reference" and method != "qlora" else bf16
            rows.append({
                "method": method, "side": side, "repeats": len(runs), "tokens_per_s": tps,
                "step_s_median": median([r.get("step_s_median") for r in runs]),
                "peak_mem_gb": median([r.get("peak_mem_bytes") for r in runs]) / 1e9,
                "precision": runs[0].get("precision") or runs[0].get("dtype"),
                "flops_convention": fl["convention"], "model_gflops_per_s": tps * fl["model"] / 1e9,
                "mfu_vs_bf16": tps * fl["model"] / bf16, "hfu_vs_bf16": tps * fl["executed"] / bf16,
                "mfu_vs_own_dtype": tps * fl["model"] / rate,
                "speedup_vs_reference": tps / ref_tps if ref_tps else None,
                "fixed_overhead_s": median([r.get("fixed_overhead_s") for r in runs]),
                "train_loss": median([r.get("train_loss") for r in runs]),
            })
    return rows


def markdown(rows: list[dict[str, Any]], matmul: dict[str, Any], meta: dict[str, Any], sweep: dict | None) -> str:
    bf16 = peak(matmul, "bf16")
    emulated = "2048x2048x2048" not in matmul["rates"]["bf16"]  # timed on a small probe only (benchmarks/matmul.py)
    shaped = matmul["rates"]["fp32" if emulated else "bf16"]
    lines = [
        f"# Training throughput ({meta['model']}, task=classify, batch {meta['batch_size']}, {meta['steps']} steps, "
        f"{meta['repeats']} interleaved repeats, medians)", "",
        f"Matmul limit (torch.matmul 2048^3, median): bf16 {bf16:.{2 if bf16 < 10 else 0}f} GFLOP/s"
        + (" (emulated: no AMX / AVX512-BF16 here; timed at 512^3)" if emulated else "")
        + f", fp32 {peak(matmul, 'fp32'):.0f} GFLOP/s; model-shaped {'fp32' if emulated else 'bf16'} "
        + ", ".join(f"{k} {v['gflops_median']:.0f}" for k, v in shaped.items() if k.startswith("model")) + ".",
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
    return "\n".join(lines + sweep_markdown(sweep)) + "\n"


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
    parser.add_argument("--sweep-budget", choices=("quick", "default", "study"), default="quick",
                        help="the in-process sweep's runs: quick (4 steps, --n-eval rows: fixed costs), the default "
                             "run's budget and evaluation (overhead ratios comparable with a default run's), or the "
                             "deciding study's classify cell (sweeps/study/fair-classify.yaml: what a verdict's runs cost; "
                             "with --sweep-runs 4, the study's overhead (wall - training) / training, target 0.15)")
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
        print("  sweep   " + (sweep.get("error") or f"overhead ratio {ratio_text(sweep['overhead_ratio'])} for the process, "
              f"{ratio_text(sweep['later_runs_overhead_ratio_median'])} median after the first run; per-run fixed overhead "
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
    limit = limits.summary()
    payload = {"meta": meta, "matmul": matmul, "rows": rows, "sweep": sweep, "raw": raw, "overhead": overhead,
               "evaluation": evaluation, "limit_readings": limit}
    # the deciding study's overhead alone (--methods= --sweep-budget study) is a kind of its own: the docs page
    # keeps showing the newest throughput table beside it
    study_only = not methods and a.sweep_budget == "study"
    if study_only:
        head = "\n".join(["# The deciding study's overhead (a cell of sweeps/study/fair-classify.yaml, timed from "
                          "outside)", *sweep_markdown(sweep)]) + "\n"
    else:
        head = markdown(rows, matmul, meta, sweep)
    md = head + verdict_markdown(overhead, evaluation, limit)
    path = write_stamped(a.out, "study-overhead" if study_only else "bench", payload, md)
    print(md)
    print(f"bench: wrote {path} and its .md; `python -m benchmarks.docs_page` updates the docs page", flush=True)


if __name__ == "__main__":
    main()
