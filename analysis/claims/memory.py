"""Claim 14's estimator rows at the workload the quoted figures assume, and the memory frontier table.

The quoted 7B figures (full FT ~70 GB, LoRA r=16 ~28 GB, QLoRA ~10-14 GB) follow the QLoRA paper's setting
(Dettmers et al. 2023, Fig. 6: LLaMA-7B, batch 1, 512 tokens, gradient checkpointing; paged optimizer): so each
is evaluated at batch 1 x 512 with gradient checkpointing, QLoRA with paged AdamW 8-bit, full FT "in FP16" as
pure bf16 (bf16 weights, gradients and AdamW states: the ~8 bytes/parameter arithmetic behind "70 GB"), LoRA
with torch AdamW on its bf16 base, and 70B full FT in mixed precision (16 bytes/parameter). All estimated
(harness.estimate), not measured.
"""

from __future__ import annotations

import csv
import math
from pathlib import Path
from typing import Any

QLORA_WORKLOAD = ["train.batch_size=1", "train.max_seq_len=512", "train.gradient_checkpointing=true"]

# name -> (estimator overrides, quoted figure in GB as (low, high))
CLAIM_14: dict[str, tuple[list[str], tuple[float, float]]] = {
    "7b-full-bf16": (["model=llama-2-7b", "method=full", "train.precision=bf16", *QLORA_WORKLOAD], (70, 70)),
    "7b-lora": (["model=llama-2-7b", "method=lora", "r=16", "targets=qv", *QLORA_WORKLOAD], (28, 28)),
    "7b-qlora": (["model=llama-2-7b", "method=qlora", "r=16", "targets=qv", "train.optim=paged_adamw_8bit",
                  *QLORA_WORKLOAD], (10, 14)),
    "70b-full": (["model=llama-3.1-70b", "method=full", *QLORA_WORKLOAD], (1000, math.inf)),
}

# the frontier's methods on Llama-2-7B (gradient checkpointing on: the setting that reaches the longest batches)
FRONTIER_METHODS: dict[str, list[str]] = {
    "full bf16": ["model=llama-2-7b", "method=full", "train.precision=bf16", "train.gradient_checkpointing=true"],
    "LoRA r=16 q,v": ["model=llama-2-7b", "method=lora", "r=16", "targets=qv", "train.gradient_checkpointing=true"],
    "QLoRA r=16 q,v": ["model=llama-2-7b", "method=qlora", "r=16", "targets=qv", "train.optim=paged_adamw_8bit",
                       "train.gradient_checkpointing=true"],
}
FRONTIER_BUDGETS_GIB = (12, 24, 80)


def workload(est: dict[str, Any]) -> str:
    """The workload an estimator row was computed at, read off the row itself."""
    return (f"batch {est['batch_size']} x {est['seq_len']} tokens, {est['precision']}, {est['optim']}, "
            f"checkpointing {'on' if est['checkpointing'] else 'off'}")


def memory_frontier() -> list[dict[str, Any]]:
    """Every frontier method's largest batch per sequence length and memory budget (estimated)."""
    from harness.estimate.frontier import frontier

    return [{"method": name, **row} for name, overrides in FRONTIER_METHODS.items()
            for row in frontier(overrides, FRONTIER_BUDGETS_GIB)]


def frontier_markdown(rows: list[dict[str, Any]]) -> str:
    """One table per budget: methods as rows, sequence lengths as columns, the largest batch in each cell."""
    seqs = sorted({r["seq_len"] for r in rows})
    lines = ["# Memory frontier on Llama-2-7B (estimated, not measured)", "",
             "The largest batch (powers of 2 up to 1024) whose peak memory, as harness.estimate predicts it on one "
             "CUDA GPU (CUDA context 0.5 GiB included; paged optimizer states counted on the GPU), fits the budget, "
             "per sequence length. Gradient checkpointing on; full FT in pure bf16 with AdamW, LoRA with AdamW on a "
             "bf16 base, QLoRA NF4 + double quantisation with paged AdamW 8-bit. 0: not even batch 1 fits. "
             "Rebuilt by `make claims` (analysis/claims/memory.py).", ""]
    for budget in sorted({r["budget_gib"] for r in rows}):
        lines += [f"## {budget:g} GiB", "", "| method | " + " | ".join(f"seq {s}" for s in seqs) + " |",
                  "|---|" + "---:|" * len(seqs)]
        for method in dict.fromkeys(r["method"] for r in rows):
            cells = {r["seq_len"]: r for r in rows if r["method"] == method and r["budget_gib"] == budget}
            lines.append(f"| {method} | " + " | ".join(
                f"{cells[s]['batch']} ({cells[s]['tokens']:,} tokens)" if cells[s]["batch"] else "0" for s in seqs) + " |")
        lines.append("")
    return "\n".join(lines)


def write_frontier(rows: list[dict[str, Any]], out: Path) -> None:
    """memory_frontier.csv and memory_frontier.md into `out` (next to the ledger)."""
    with open(out / "memory_frontier.csv", "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=["method", "budget_gib", "seq_len", "batch", "tokens", "peak_gib"])
        writer.writeheader()
        writer.writerows(rows)
    (out / "memory_frontier.md").write_text(frontier_markdown(rows))
