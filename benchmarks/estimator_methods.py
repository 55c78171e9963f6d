"""The estimator against torch's profiler, method by method, on the bundled model.

    python -m benchmarks.estimator_methods                          # the 13 methods, 3 steps each (~10 min here)
    python -m benchmarks.estimator_methods --methods lora,prefix --steps 3 --out /tmp/est

Each method trains a few steps of `classify` on smollm2-135m in its own process, with torch's profiler recording
the CPU allocator over the training loop. The live-tensor peak minus what was allocated when the loop began is
what training added in tensors: activations of the largest batch, gradients, optimizer states (and anything a
method allocates on top). That is what the estimator predicts as the run's growth (`harness.estimate --check`
on the same run folder, which reads the run's largest recorded batch), so the two are compared without the heap
glibc keeps resident (harness/estimate/check.py). On CUDA the record's peak allocated figure is already this
measurement: `python -m harness.estimate --check runs/` compares it directly.

Writes <date>T<time>_<host>_estimator-methods.{json,md} to --out (default benchmarks/results/;
benchmarks/stamp.py).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

from benchmarks.stamp import write_stamped

REPO = Path(__file__).resolve().parent.parent
RESULTS = REPO / "benchmarks" / "results"
COMMON = ["model=smollm2-135m", "task=classify", "tracking=none", "task.n_train=24", "task.n_eval=8"]


def profiled_peak_memory(trace: Path):
    """harness.measure.PeakMemory with torch's profiler (CPU allocator) over the training loop, its trace written
    to `trace` when training ends."""
    from torch.profiler import ProfilerActivity, profile

    from harness import measure

    class Profiled(measure.PeakMemory):
        def on_train_begin(self, args, state, control, **kwargs):
            super().on_train_begin(args, state, control, **kwargs)
            self.profiler = profile(activities=[ProfilerActivity.CPU], profile_memory=True)
            self.profiler.__enter__()

        def on_train_end(self, args, state, control, **kwargs):
            self.profiler.__exit__(None, None, None)
            self.profiler.export_chrome_trace(str(trace))
            super().on_train_end(args, state, control, **kwargs)

    return Profiled


def live_growth(trace: Path) -> int | None:
    """The allocator's live-tensor peak in the trace minus its first reading: what training added in tensors."""
    events = sorted((e for e in json.loads(Path(trace).read_text())["traceEvents"]
                     if e.get("name") == "[memory]" and e["args"].get("Device Type") == 0), key=lambda e: e["ts"])
    allocated = [e["args"]["Total Allocated"] for e in events]
    return max(allocated) - allocated[0] if allocated else None


def profiled_run(overrides: list[str], out: Path) -> None:
    """One run in this process with the profiler over its training loop; writes the live-tensor growth."""
    from harness import measure
    from harness.config import validate
    from harness.pipeline import execute
    from harness.preflight import compose_checked

    trace = out / "trace.json"
    measure.PeakMemory = profiled_peak_memory(trace)  # pipeline looks it up at run time
    cfg = compose_checked(overrides + [f"paths.runs={out / 'runs'}"])
    spec = validate(cfg)
    rid = spec.run_id
    result = execute(spec, out / "runs" / rid)
    growth = live_growth(trace)
    trace.unlink()  # hundreds of MB; the figure is all that is kept
    (out / "measured.json").write_text(json.dumps({
        "run_dir": str(out / "runs" / rid), "status": result.get("status"), "live_growth_bytes": growth}))


def compare(method: str, steps: int, work: Path, extra: list[str]) -> dict[str, Any]:
    from harness.estimate.check import check_run

    out = work / method
    out.mkdir(parents=True, exist_ok=True)
    log = out / "run.log"
    cmd = [sys.executable, "-m", "benchmarks.estimator_methods", "--one", str(out), "--",
           *COMMON, f"method={method}", f"train.max_steps={steps}", *extra]
    with open(log, "w") as fh:
        rc = subprocess.run(cmd, cwd=REPO, stdout=fh, stderr=subprocess.STDOUT).returncode
    measured = json.loads((out / "measured.json").read_text()) if (out / "measured.json").exists() else None
    if rc != 0 or not measured or measured["status"] not in ("ok", "collapsed"):
        return {"method": method, "error": f"exit {rc}, see {log}"}
    row = check_run(Path(measured["run_dir"]))
    predicted, live = row["growth_predicted_bytes"], measured["live_growth_bytes"]
    parts = row["breakdown"]
    return {"method": method, "params_trainable": row["params_trainable"], "predicted_bytes": predicted,
            "profiler_bytes": live, "error_pct": 100.0 * (predicted - live) / live,
            "activations_bytes": parts.get("activations"), "gradients_bytes": parts.get("gradients"),
            "optimizer_bytes": parts.get("optimizer"), "method_state_bytes": parts.get("method_state") or 0,
            "batch_shape": row.get("batch_shape")}


def markdown(rows: list[dict[str, Any]], steps: int) -> str:
    mib = 2**20
    lines = [f"Training tensors on smollm2-135m (`classify`, {steps} steps, batch 8, bf16 frozen base for adapters, "
             "bf16-mixed for full FT): the estimator's prediction against torch's profiler (CPU allocator, live "
             "tensors at the peak minus those at the loop's start).", "",
             "| method | trainable | predicted MiB | profiler MiB | error | of which activations / gradients / optimizer MiB |",
             "|---|---:|---:|---:|---:|---|"]
    for r in rows:
        if "error" in r:
            lines.append(f"| {r['method']} | | | | {r['error']} | |")
            continue
        lines.append(f"| {r['method']} | {r['params_trainable']:,} | {r['predicted_bytes'] / mib:.1f} | "
                     f"{r['profiler_bytes'] / mib:.1f} | {r['error_pct']:+.1f}% | "
                     f"{(r['activations_bytes'] or 0) / mib:.1f} / {(r['gradients_bytes'] or 0) / mib:.1f} / "
                     f"{(r['optimizer_bytes'] or 0) / mib:.1f}"
                     + (f" (+ {r['method_state_bytes'] / mib:.1f} method state)" if r.get("method_state_bytes") else "")
                     + " |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["--one"]:  # the child: one profiled run
        profiled_run(argv[3:], Path(argv[1]))
        return 0
    from harness.config import group_options

    parser = argparse.ArgumentParser(prog="python -m benchmarks.estimator_methods", description=__doc__.split("\n\n")[0])
    parser.add_argument("--methods", default=",".join(group_options("method")))
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--out", type=Path, default=RESULTS)
    parser.add_argument("overrides", nargs="*", help="extra harness overrides for every run")
    a = parser.parse_args(argv)
    work = Path(tempfile.mkdtemp(prefix="harness-estimator-"))
    rows = []
    for method in a.methods.split(","):
        rows.append(compare(method, a.steps, work, a.overrides))
        r = rows[-1]
        print(f"  {method:8s} " + (r["error"] if "error" in r else
              f"predicted {r['predicted_bytes'] / 2**20:.1f} MiB, profiler {r['profiler_bytes'] / 2**20:.1f} MiB "
              f"({r['error_pct']:+.1f}%)"), flush=True)
    payload = {"steps": a.steps, "rows": rows, "work": str(work)}
    write_stamped(a.out, "estimator-methods", payload, markdown(rows, a.steps))
    print(markdown(rows, a.steps))
    return 0


if __name__ == "__main__":
    sys.exit(main())
