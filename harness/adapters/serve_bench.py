"""Inference cost of an adapter: generation latency and throughput for the base model, the unmerged adapter,
the merged model, and hot-swapping between two adapters on one loaded base.

    python -m harness.adapters.serve_bench RUN_DIR        # batch sizes 1,4,16; 32 new tokens; 5 repeats
    python -m harness.adapters.serve_bench RUN_DIR --other RUN_B --batch-sizes 1,8 --new-tokens 64 --out bench/

Why: the usual claims are that a merged LoRA adds no latency and an unmerged one a little. Each mode gets its
own copy of the weights (loaded like harness.adapters.merge loads them; a QLoRA base stays 4-bit for base /
unmerged / hot-swap and is de-quantised for merged), the same prompts (the run's own test prompts cut to one length, so
no padding), greedy decoding of exactly `--new-tokens` tokens, under `torch.inference_mode`. Repeats are
interleaved across modes (round r runs every mode once), so load from other processes hits all modes alike;
the report gives medians. Per batch size: prefill time (a 1-token generate), decode ms per token
((full - prefill) / (new_tokens - 1)), and generated tokens/s. Hot-swap switches adapter (`set_adapter`) before
every request, alternating two adapters; switching alone is also timed over many switches. Writes
serve_bench.json and serve_bench.md into the run folder (or --out).
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import torch

from harness.exits import error
from harness.errors import ConfigError, HarnessError
from harness.results import now, versions, write_json_atomic
from harness.runfolder import RunFolder, open_run

MODES = ("base", "unmerged", "merged", "hotswap")
BENCH_JSON, BENCH_MD = "serve_bench.json", "serve_bench.md"


def prompt_batch(run: RunFolder, tokenizer, batch: int, prompt_tokens: int) -> dict[str, torch.Tensor]:
    """`batch` test prompts of the run's task, each cut to its last `prompt_tokens` tokens (no padding needed);
    short prompts are repeated from the start so every row has the same length."""
    from harness.tasks import get_task

    task = get_task(run.task_cfg, run.cache)
    rows = task.read_split("test")
    ids = []
    for i in range(batch):
        p = task.prompt_ids(tokenizer, rows[i % len(rows)])
        while len(p) < prompt_tokens:
            p = p + p
        ids.append(p[-prompt_tokens:])
    input_ids = torch.tensor(ids)
    return {"input_ids": input_ids, "attention_mask": torch.ones_like(input_ids)}


@torch.inference_mode()
def generate(model, inputs: dict[str, torch.Tensor], new_tokens: int, pad_id: int) -> tuple[float, torch.Tensor]:
    """Wall seconds for greedy generation of exactly `new_tokens` tokens per row, and the tokens."""
    device = next(model.parameters()).device
    inputs = {k: v.to(device) for k, v in inputs.items()}
    if device.type == "cuda":
        torch.cuda.synchronize()
    t0 = time.perf_counter()
    out = model.generate(**inputs, max_new_tokens=new_tokens, min_new_tokens=new_tokens, do_sample=False,
                         pad_token_id=pad_id)
    if device.type == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter() - t0, out[:, inputs["input_ids"].shape[1]:].cpu()


def serve(model, mode: str, inputs: dict[str, torch.Tensor], new_tokens: int, pad_id: int) -> tuple[float, torch.Tensor]:
    """One request; in hot-swap mode it first switches to the other adapter, and the switch counts."""
    if mode != "hotswap":
        return generate(model, inputs, new_tokens, pad_id)
    t0 = time.perf_counter()
    model.set_adapter("b" if model.active_adapter == "a" else "a")
    switch = time.perf_counter() - t0
    seconds, out = generate(model, inputs, new_tokens, pad_id)
    return seconds + switch, out


def time_switches(model, names: list[str], n: int = 200) -> float:
    """Median seconds of one `set_adapter` call, alternating between the loaded adapters."""
    samples = []
    for i in range(n):
        t0 = time.perf_counter()
        model.set_adapter(names[i % len(names)])
        samples.append(time.perf_counter() - t0)
    model.set_adapter(names[0])
    return statistics.median(samples)


def build_models(run: RunFolder, other: RunFolder | None) -> tuple[dict[str, Any], Any, dict[str, Any]]:
    """One model per mode (separate copies of the weights), the tokenizer and set-up facts (load/merge times)."""
    from peft import PeftModel

    base, tokenizer, record = run.load_base()
    adapted, _, _ = run.load_base()
    t0 = time.perf_counter()
    adapted = PeftModel.from_pretrained(adapted, str(run.saved), adapter_name="a")
    load_a = time.perf_counter() - t0
    second = other.saved if other is not None else run.saved  # no --other: the same weights under a second name
    t0 = time.perf_counter()
    adapted.load_adapter(str(second), adapter_name="b")
    load_b = time.perf_counter() - t0
    adapted.set_adapter("a")
    plain, _, merged_record = run.load_base(dequantize=True)
    t0 = time.perf_counter()
    merged = PeftModel.from_pretrained(plain, str(run.saved)).merge_and_unload()
    merge_s = time.perf_counter() - t0
    for m in (base, adapted, merged):
        m.eval()
        # Same requires_grad everywhere (from_pretrained's default, True; peft froze its copies). It changes no
        # arithmetic under inference_mode, but torch.matmul folds the lm_head call on the sliced last hidden
        # state into one mm only when the weight requires grad; with a frozen weight CPU torch takes a bmm path
        # that copies the whole lm_head weight per row (measured: 2x the batch-16 prefill), which would make
        # the frozen modes look slower for a reason that has nothing to do with adapters.
        m.requires_grad_(True)
    setup = {"base": record, "merged_into": merged_record, "adapter_load_s": round(load_a, 4),
             "second_adapter_load_s": round(load_b, 4), "merge_s": round(merge_s, 4),
             "second_adapter": other.name if other is not None else f"{run.name} (same weights, loaded again: no --other)",
             "switch_ms": 1000 * time_switches(adapted, ["a", "b"])}
    return {"base": base, "unmerged": adapted, "merged": merged, "hotswap": adapted}, tokenizer, setup


def bench(run: RunFolder, other: RunFolder | None, batch_sizes: list[int], new_tokens: int, prompt_tokens: int,
          repeats: int) -> dict[str, Any]:
    """Time every mode at every batch size, interleaving modes within each round; medians per cell."""
    if run.model_cfg.kind != "causal_lm":
        raise ConfigError(f"run {run.name} is an encoder ({run.result['model']}); serve_bench times generation, "
                          f"which needs a causal LM run (e.g. model=smollm2-135m)")
    run.require_adapter("serve_bench")
    if other is not None:
        other.require_adapter("--other")
        if other.result["model"] != run.result["model"]:
            raise ConfigError(f"--other run {other.name} is on {other.result['model']}, not {run.result['model']}; "
                              f"hot-swap needs two adapters of one base")
    load_avg_before = os.getloadavg()[0]
    models, tokenizer, setup = build_models(run, other)
    pad = tokenizer.pad_token_id
    raw: dict[str, dict[int, dict[str, Any]]] = {m: {} for m in MODES}
    agreement = {}
    for batch in batch_sizes:
        inputs = prompt_batch(run, tokenizer, batch, prompt_tokens)
        for mode in MODES:  # warm-up: first calls allocate and pick kernels
            generate(models[mode], inputs, 2, pad)
        cells = {m: {"full": [], "prefill": []} for m in MODES}
        tokens = {}
        for _ in range(repeats):
            for mode in MODES:
                full, out = serve(models[mode], mode, inputs, new_tokens, pad)
                prefill, _ = serve(models[mode], mode, inputs, 1, pad)
                if mode == "hotswap":
                    models[mode].set_adapter("a")  # unmerged mode always serves adapter a
                cells[mode]["full"].append(full)
                cells[mode]["prefill"].append(prefill)
                tokens.setdefault(mode, out)
        for mode in MODES:
            full = statistics.median(cells[mode]["full"])
            prefill = statistics.median(cells[mode]["prefill"])
            raw[mode][batch] = {
                "full_s": full, "prefill_ms": 1000 * prefill,
                "decode_ms_per_token": 1000 * max(full - prefill, 0.0) / max(new_tokens - 1, 1),
                "ms_per_token": 1000 * full / new_tokens, "tokens_per_s": batch * new_tokens / full,
                "samples_full_s": cells[mode]["full"], "samples_prefill_s": cells[mode]["prefill"],
            }
        agreement[batch] = float((tokens["merged"] == tokens["unmerged"]).float().mean())
        print(f"batch {batch}: " + ", ".join(f"{m} {raw[m][batch]['tokens_per_s']:.1f} tok/s" for m in MODES),
              file=sys.stderr, flush=True)
    overhead = {b: {"unmerged_vs_merged": raw["unmerged"][b]["full_s"] / raw["merged"][b]["full_s"] - 1,
                    "merged_vs_base": raw["merged"][b]["full_s"] / raw["base"][b]["full_s"] - 1,
                    "hotswap_vs_unmerged": raw["hotswap"][b]["full_s"] / raw["unmerged"][b]["full_s"] - 1,
                    # the same ratio within each round (modes ran back to back), so drift between rounds cancels
                    "unmerged_vs_merged_per_round": [u / m - 1 for u, m in zip(raw["unmerged"][b]["samples_full_s"],
                                                                               raw["merged"][b]["samples_full_s"])]}
                for b in batch_sizes}
    return {
        "run": run.name, "run_dir": str(run.path), "model": run.result["model"], "method": run.result["method"],
        "r": run.adapter_config.get("r"), "targets": run.result.get("targets"), **setup,
        "device": "cuda" if torch.cuda.is_available() else "cpu", "threads": torch.get_num_threads(),
        "load_avg_before": load_avg_before, "batch_sizes": batch_sizes, "new_tokens": new_tokens,
        "prompt_tokens": prompt_tokens, "repeats": repeats, "modes": raw, "overhead": overhead,
        "merged_unmerged_token_agreement": agreement, "versions": versions(), "created_at": now(),
    }


def markdown(report: dict[str, Any]) -> str:
    lines = [f"# Serving cost: {report['run']}", "",
             f"{report['model']} / {report['method']} r={report['r']} targets={report['targets']}; "
             f"{report['device']}, {report['threads']} threads, load average {report['load_avg_before']:.1f} at start; "
             f"prompt {report['prompt_tokens']} tokens, {report['new_tokens']} new tokens greedy, median of "
             f"{report['repeats']} interleaved repeats.", "",
             f"Base: {report['base']['base']}. Merged into: {report['merged_into']['base']}.",
             f"Adapter load {report['adapter_load_s']:.3f} s; merge_and_unload {report['merge_s']:.3f} s; "
             f"switch (set_adapter) {report['switch_ms']:.3f} ms median; second adapter: {report['second_adapter']}.",
             "", "| batch | mode | prefill ms | decode ms/token | ms/token (all) | tokens/s | vs merged |",
             "|---|---|---|---|---|---|---|"]
    for b in report["batch_sizes"]:
        merged = report["modes"]["merged"][b]["full_s"]
        for mode in MODES:
            c = report["modes"][mode][b]
            lines.append(f"| {b} | {mode} | {c['prefill_ms']:.1f} | {c['decode_ms_per_token']:.2f} | "
                         f"{c['ms_per_token']:.2f} | {c['tokens_per_s']:.1f} | {100 * (c['full_s'] / merged - 1):+.1f}% |")
    lines += ["", "Unmerged over merged (median wall time, same prompts; in brackets the lowest and highest of the "
              "same ratio within one round): " + ", ".join(
        f"batch {b}: {100 * o['unmerged_vs_merged']:+.1f}% [{100 * min(o['unmerged_vs_merged_per_round']):+.1f}%, "
        f"{100 * max(o['unmerged_vs_merged_per_round']):+.1f}%]" for b, o in report["overhead"].items()),
        "Merged and unmerged greedy tokens agree on " + ", ".join(
        f"{100 * a:.0f}% (batch {b})" for b, a in report["merged_unmerged_token_agreement"].items()) + ".", ""]
    return "\n".join(lines)


def _int_list(text: str) -> list[int]:
    try:
        values = [int(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise ConfigError(f"--batch-sizes must be comma-separated positive integers, got {text!r}") from None
    if not values or min(values) <= 0:
        raise ConfigError(f"--batch-sizes must be comma-separated positive integers, got {text!r}")
    return values


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m harness.adapters.serve_bench", description=__doc__.split("\n\n")[0])
    parser.add_argument("run", type=Path, help="an adapter run folder (paths.runs/<run_id>)")
    parser.add_argument("--other", type=Path, help="a second adapter run on the same base, for hot-swapping")
    parser.add_argument("--batch-sizes", default="1,4,16")
    parser.add_argument("--new-tokens", type=int, default=32)
    parser.add_argument("--prompt-tokens", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--out", type=Path, help="folder for serve_bench.json / .md (default: the run folder)")
    args = parser.parse_args(sys.argv[1:] if argv is None else argv)
    try:
        batch_sizes = _int_list(args.batch_sizes)
        for name in ("new_tokens", "prompt_tokens", "repeats"):
            if getattr(args, name) <= 0 or (name == "new_tokens" and args.new_tokens < 2):
                raise ConfigError(f"--{name.replace('_', '-')} must be a positive integer (new tokens at least 2), "
                                  f"got {getattr(args, name)}")
        run = open_run(args.run, finished=True)
        other = open_run(args.other, finished=True) if args.other else None
        report = bench(run, other, batch_sizes, args.new_tokens, args.prompt_tokens, args.repeats)
    except HarnessError as err:
        return error(err)
    out = args.out or run.path
    write_json_atomic(out / BENCH_JSON, report)
    (out / BENCH_MD).write_text(markdown(report))
    print(markdown(report))
    return 0


if __name__ == "__main__":
    sys.exit(main())
