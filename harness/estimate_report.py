"""Command line and printing for harness.estimate: one configuration in detail, a seed-style table of every
method, or predicted vs measured peak memory for finished runs.

    python -m harness.estimate model=llama-3.1-8b method=qlora r=16 targets=qv [--json]
    python -m harness.estimate model=llama-2-7b --table [--price 2.5] [--tokens-per-s 3000]
    python -m harness.estimate --check runs/ [--json]
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from harness.errors import HarnessError


def gb(n: float) -> str:
    """Decimal gigabytes, as the seed's table and GPU spec sheets quote memory."""
    if n >= 1e12:
        return f"{n / 1e12:.2f} TB"
    if n >= 1e9:
        return f"{n / 1e9:.1f} GB"
    return f"{n / 1e6:.0f} MB"


def describe(est) -> str:
    """One configuration, part by part, with what each part assumes."""
    m = est.memory
    rank = f" r={est.r}" if est.r is not None else ""
    targets = f" targets={est.targets}" if est.targets else ""
    lines = [
        f"{est.method}{rank}{targets} on {est.model}: {est.params_trainable:,} of {est.params_total:,} parameters "
        f"train ({100 * est.params_trainable / est.params_total:.3f}%)",
        f"setting     precision {est.precision}, optim {est.optim}, batch {est.batch_size} x {est.seq_len} tokens, "
        f"checkpointing {'on' if est.checkpointing else 'off'}, device {est.device}",
        f"weights     {gb(m.weights)}  (" + ", ".join(f"{k} {gb(v)}" for k, v in m.weights_detail.items()) + ")",
    ]
    if m.autocast_copies:
        lines.append(f"autocast    {gb(m.autocast_copies)}  (16-bit copies of float32 linear weights, live in fwd/bwd)")
    lines += [
        f"gradients   {gb(m.gradients)}",
        f"optimizer   {gb(m.optimizer)}  (+ {gb(m.optimizer_step_temp)} during the step)",
        f"activations {gb(m.activations)}  (" + ", ".join(f"{k} {gb(v)}" for k, v in m.activations_detail.items()) + ")",
        f"overhead    {gb(m.overhead)}  ({m.overhead_note})",
        f"peak        {gb(m.peak)}   (sum of all parts {gb(m.sum_of_parts)})",
        f"disk        {gb(est.disk_bytes)}  ({'full model' if est.method == 'full' else 'adapter'})",
        f"cost        ${est.cost['usd']:.2f} per run: {est.cost['tokens']:,.0f} tokens at {est.cost['tokens_per_s']:,.0f} "
        f"tokens/s = {est.cost['hours']:.2f} h at ${est.cost['price_per_hour']:.2f}/h",
    ]
    if est.quantization:
        q = est.quantization
        lines.append(f"quantised   {q['quantized_linear']} linears, {q['bits']}-bit {q['quant_type'] or ''}"
                     f"{' + double quantisation' if q['double_quant'] else ''}")
    lines += [f"note        {n}" for n in est.notes]
    return "\n".join(lines)


def table(rows: list[Any]) -> str:
    """Every method side by side (Markdown), in the seed's terms: memory to train, disk to keep, cost per run."""
    head = ("| method | trainable | weights | grads | optimizer | activations | peak memory | disk | cost/run |\n"
            "|---|---:|---:|---:|---:|---:|---:|---:|---:|")
    out = [head]
    for name, est in rows:
        if isinstance(est, str):
            out.append(f"| {name} | {est} | | | | | | | |")
            continue
        m = est.memory
        out.append(f"| {name} | {est.params_trainable:,} | {gb(m.weights)} | {gb(m.gradients)} | "
                   f"{gb(m.optimizer)} | {gb(m.activations)} | **{gb(m.peak)}** | {gb(est.disk_bytes)} | "
                   f"${est.cost['usd']:.2f} |")
    return "\n".join(out)


def _batch(r: dict[str, Any]) -> str:
    shape = r.get("batch_shape")
    if shape:
        return f"{shape['tokens']} tokens, {shape['rows']} rows (longest {shape['longest_row']})"
    return f"{r['seq_len']} x {r['batch_size']}"


def _split(r: dict[str, Any], kind: str) -> str:
    if f"{kind}_measured_bytes" not in r:
        return "n/a"
    return f"{gb(r[f'{kind}_measured_bytes'])} / {gb(r[f'{kind}_predicted_bytes'])}"


def check_table(rows: list[dict[str, Any]]) -> str:
    out = ["| run | method | precision | measured as | largest batch | measured | predicted | error "
           "| at train start (meas. / pred.) | growth in training (meas. / pred.) |",
           "|---|---|---|---|---|---:|---:|---:|---:|---:|"]
    for r in rows:
        if "skipped" in r:
            out.append(f"| {r['run_id']} | skipped: {r['skipped']} | | | | | | | | |")
            continue
        out.append(f"| {r['run_id']} | {r['method']} | {r['precision']} | {r['mem_kind']} | {_batch(r)} | "
                   f"{gb(r['measured_bytes'])} | {gb(r['predicted_bytes'])} | {r['error_pct']:+.1f}% | "
                   f"{_split(r, 'start')} | {_split(r, 'growth')} |")
    if any("growth_measured_bytes" in r for r in rows):
        out += ["", "CPU: measured = peak resident set size. Growth in training beyond the predicted tensors is "
                    "mostly heap glibc keeps resident between steps (see harness/estimate_check.py)."]
    return "\n".join(out)


def parse(argv: list[str]) -> tuple[argparse.Namespace, list[str]]:
    p = argparse.ArgumentParser(prog="python -m harness.estimate", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--table", action="store_true", help="every method in conf/method side by side")
    p.add_argument("--check", nargs="+", type=Path, metavar="RUNS", help="predicted vs measured for finished runs")
    p.add_argument("--json", action="store_true", help="print JSON instead of text")
    p.add_argument("--device", choices=("cuda", "cpu"), default="cuda", help="overhead and optimizer kernels (default cuda)")
    p.add_argument("--seq-len", type=int, help="padded tokens per example (default train.max_seq_len)")
    p.add_argument("--price", type=float, default=2.0, help="GPU price in $/hour (default 2.0, an assumption)")
    p.add_argument("--tokens-per-s", type=float, help="measured training throughput (default: from FLOPs)")
    p.add_argument("--gpu-tflops", type=float, default=989.0, help="GPU bf16 dense peak (default 989: H100 SXM spec)")
    p.add_argument("--mfu", type=float, default=0.35, help="assumed model-FLOPs utilisation (default 0.35)")
    args, rest = p.parse_known_args(argv)
    unknown = [a for a in rest if a.startswith("-")]
    if unknown:
        p.error(f"unknown option {unknown[0]}")
    return args, rest


def run(argv: list[str]) -> str:
    from harness.estimate import compose_config, effective, estimate, method_names

    args, overrides = parse(argv)
    opts = {"price_per_hour": args.price, "tokens_per_s": args.tokens_per_s, "gpu_tflops": args.gpu_tflops,
            "mfu": args.mfu}
    if args.check:
        from harness.estimate_check import check_runs

        rows = check_runs(args.check, seq_len=args.seq_len, price_per_hour=args.price)
        return json.dumps(rows, indent=2) if args.json else check_table(rows)
    if args.table:
        base = [o for o in overrides if not o.startswith("method=")]
        rows: list[tuple[str, Any]] = []
        # every method at the configured precision, plus full FT in pure bf16 (bf16 weights, gradients and AdamW
        # states, ~8 bytes a parameter): the recipe behind the commonly quoted "~70 GB to fine-tune a 7B model"
        variants = [(name, [f"method={name}"]) for name in method_names()]
        variants.insert(next(i for i, (n, _) in enumerate(variants) if n == "full") + 1,
                        ("full (pure bf16)", ["method=full", "train.precision=bf16"]))
        for name, extra in variants:
            try:
                eff = effective(compose_config([o for o in base if not (name.startswith("full (") and o.startswith("train.precision="))] + extra))
                rows.append((name, estimate(eff, device=args.device, seq_len=args.seq_len, **opts)))
            except HarnessError as err:
                rows.append((name, f"n/a: {err}"))
        if args.json:
            return json.dumps([{"method": n, **(e.as_dict() if not isinstance(e, str) else {"error": e})}
                               for n, e in rows], indent=2, default=str)
        first = next((e for _, e in rows if not isinstance(e, str)), None)
        title = (f"{first.model}, batch {first.batch_size} x {first.seq_len} tokens, {first.optim}, "
                 f"checkpointing {'on' if first.checkpointing else 'off'}, device {first.device}" if first else "")
        return f"{title}\n\n{table(rows)}"
    est = estimate(effective(compose_config(overrides)), device=args.device, seq_len=args.seq_len, **opts)
    return json.dumps(est.as_dict(), indent=2, default=str) if args.json else describe(est)


def main(argv: list[str] | None = None) -> None:
    import os

    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    try:
        print(run(sys.argv[1:] if argv is None else argv))
    except HarnessError as err:
        print(f"error: {err}", file=sys.stderr)
        sys.exit(2)
