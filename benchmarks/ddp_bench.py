"""Data-parallel scaling on this machine: one process against a 2-process gloo DDP run (torchrun), same model,
task, per-process batch and steps, the cores divided between the processes.

    python -m benchmarks.ddp_bench                       # smollm2-135m, LoRA r=16, 20 steps, batch 8 per process
    python -m benchmarks.ddp_bench --steps 40 --methods lora,full --out benchmarks/results/

Throughput is the record's: global non-padding tokens over the training loop (scoring excluded); the DDP run's
per-rank figures are beside it. Scaling = DDP tokens/s over one process's tokens/s (2.0 would be perfect; a
2-core CPU gives each DDP process one core where the single process had two, so ~1 is the expectation here and
the figure measures DDP's overhead rather than a speed-up). Writes <date>T<time>_<host>_ddp.json / .md
(benchmarks/stamp.py).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

from benchmarks.stamp import write_stamped

REPO = Path(__file__).resolve().parent.parent


def one_run(launch: list[str], args: list[str], runs: Path, threads: int, log: Path) -> dict[str, Any]:
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}
    with open(log, "w") as fh:
        rc = subprocess.run([*launch, "-m", "harness.run", *args, f"paths.runs={runs}"], cwd=REPO, env=env,
                            stdout=fh, stderr=subprocess.STDOUT).returncode
    recs = [json.loads(p.read_text()) for p in runs.glob("*/result.json")]
    if rc != 0 or not recs or recs[0].get("status") != "ok":
        return {"error": f"exit {rc}, see {log}"}
    r = recs[0]
    return {k: r.get(k) for k in ("train_tokens_per_s", "train_tokens", "train_runtime_s", "peak_mem_bytes",
                                  "world_size", "train_tokens_per_s_per_rank", "peak_mem_bytes_per_rank",
                                  "weights_in_sync", "torch_threads")}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.ddp_bench", description=__doc__.split("\n\n")[0])
    parser.add_argument("--methods", default="lora")
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results")
    a = parser.parse_args(argv)
    cores = os.cpu_count() or 2
    work = Path(tempfile.mkdtemp(prefix="harness-ddp-bench-"))
    rows = []
    for method in a.methods.split(","):
        args = [f"model={a.model}", f"method={method}", "task=classify", "tracking=none", "task.n_eval=8",
                f"train.max_steps={a.steps}", f"train.batch_size={a.batch_size}", "rerun=true"]
        single = one_run([sys.executable], args, work / f"{method}-1", cores, work / f"{method}-1.log")
        ddp = one_run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2"],
                      [*args, "dist=ddp"], work / f"{method}-2", max(1, cores // 2), work / f"{method}-2.log")
        scaling = (ddp["train_tokens_per_s"] / single["train_tokens_per_s"]
                   if "error" not in ddp and "error" not in single else None)
        rows.append({"method": method, "single": single, "ddp2": ddp, "scaling": scaling})
        print(f"  {method}: 1 process {single.get('train_tokens_per_s')}, 2-process DDP "
              f"{ddp.get('train_tokens_per_s')} tokens/s, scaling {scaling}", flush=True)
    a.out.mkdir(parents=True, exist_ok=True)
    meta = {"model": a.model, "steps": a.steps, "batch_per_process": a.batch_size, "cores": cores}

    lines = [f"DDP scaling on {cores} CPU cores ({a.model}, classify, {a.steps} steps, batch {a.batch_size} per "
             "process; one process with all cores vs 2 gloo DDP processes with half each)", "",
             "| method | 1 process tokens/s | 2-process DDP tokens/s (per rank) | scaling | peak per rank (GB) |",
             "|---|---:|---:|---:|---|"]
    for r in rows:
        s, d = r["single"], r["ddp2"]
        if "error" in s or "error" in d:
            lines.append(f"| {r['method']} | {s.get('error', '')} | {d.get('error', '')} | | |")
            continue
        per = ", ".join(f"{v:.0f}" for v in d["train_tokens_per_s_per_rank"])
        peaks = ", ".join(f"{v / 1e9:.2f}" for v in d["peak_mem_bytes_per_rank"])
        lines.append(f"| {r['method']} | {s['train_tokens_per_s']:.0f} | {d['train_tokens_per_s']:.0f} ({per}) | "
                     f"{r['scaling']:.2f} | {peaks} |")
    write_stamped(a.out, "ddp", {"meta": meta, "rows": rows}, "\n".join(lines))
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
