"""Printing for the estimator: one configuration in detail, a table of every method, or predicted vs measured
peak memory for finished runs (the command line is harness/estimate/cli.py).

    python -m harness.estimate model=llama-3.1-8b method=qlora r=16 targets=qv [--json]
    python -m harness.estimate model=llama-2-7b --table [--price 2.5] [--tokens-per-s 3000]
    python -m harness.estimate --check runs/ [--json]
"""

from __future__ import annotations

from functools import partial
from typing import Any

from harness.units import format_bytes


gb = partial(format_bytes, decimal=True)  # decimal units, as GPU spec sheets and the quoted tables use


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
    ]
    if m.dist_buffers:
        lines.append(f"dist        {gb(m.dist_buffers)}  (DDP's gradient buckets, or FSDP / ZeRO-3's gathered units)")
    if m.method_state:
        lines.append(f"method      {gb(m.method_state)}  (AdaLoRA's importance scores: 3 copies of the adapter)")
    lines += [
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
    """Every method side by side (Markdown), in the terms of the commonly quoted fine-tuning tables: memory to
    train, disk to keep, cost per run."""
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
                    "mostly heap glibc keeps resident between steps (see harness/estimate/check.py)."]
    return "\n".join(out)
