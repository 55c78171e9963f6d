"""The estimator's command line (`python -m harness.estimate`, see harness/estimate/__init__.py).

    python -m harness.estimate model=llama-3.1-8b method=qlora r=16 targets=qv [--json]
    python -m harness.estimate model=llama-2-7b --table [--price 2.5] [--tokens-per-s 3000]
    python -m harness.estimate --check runs/ [--json]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from typing import Any

from harness.exits import exit_on_error
from harness.errors import HarnessError
from harness.estimate.check import check_runs
from harness.estimate.model import estimate
from harness.estimate.run_config import compose_config, effective, method_names
from harness.estimate.report import check_table, describe, table


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
    args, overrides = parse(argv)
    opts = {"price_per_hour": args.price, "tokens_per_s": args.tokens_per_s, "gpu_tflops": args.gpu_tflops,
            "mfu": args.mfu}
    if args.check:
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
    os.environ.setdefault("HF_HUB_OFFLINE", "1")  # presets carry their configs; never wait on the hub
    with exit_on_error():
        print(run(sys.argv[1:] if argv is None else argv))
