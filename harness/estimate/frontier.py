"""The memory frontier: per sequence length, the largest batch (a power of 2) whose estimated peak fits a
memory budget. The model is built once (meta device) and the arithmetic re-run per batch shape.

    from harness.estimate.frontier import frontier
    rows = frontier(["model=llama-2-7b", "method=qlora", "r=16", "targets=qv"], budgets_gib=(12, 24, 80))
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from harness.estimate.memory import GiB

SEQ_LENS = (512, 1024, 2048, 4096)
BATCHES = tuple(2 ** i for i in range(11))   # 1 .. 1024


def largest_fitting(peak: Callable[[int, int], float], budget_bytes: float, seq_len: int,
                    batches: Sequence[int] = BATCHES) -> tuple[int, float | None]:
    """(largest batch in `batches` whose peak(seq_len, batch) <= budget, its peak); (0, None) when not even the
    smallest fits. Peak memory grows with the batch, so the search stops at the first batch that does not fit."""
    best, best_peak = 0, None
    for batch in sorted(batches):
        value = peak(seq_len, batch)
        if value > budget_bytes:
            break
        best, best_peak = batch, value
    return best, best_peak


def frontier_rows(peak: Callable[[int, int], float], budgets_gib: Sequence[float], seq_lens: Sequence[int] = SEQ_LENS,
                  batches: Sequence[int] = BATCHES) -> list[dict[str, Any]]:
    """One row per (budget, sequence length): the largest batch, batch x length in tokens, and its peak (GiB)."""
    rows = []
    for budget in budgets_gib:
        for s in seq_lens:
            batch, value = largest_fitting(peak, budget * GiB, s, batches)
            rows.append({"budget_gib": budget, "seq_len": s, "batch": batch, "tokens": batch * s,
                         "peak_gib": None if value is None else round(value / GiB, 2)})
    return rows


def frontier(overrides: list[str], budgets_gib: Sequence[float] = (12, 24, 80), seq_lens: Sequence[int] = SEQ_LENS,
             batches: Sequence[int] = BATCHES, device: str = "cuda") -> list[dict[str, Any]]:
    """`frontier_rows` for a configuration given as run overrides (its optimizer, precision and checkpointing
    setting as given; batch size and sequence length are what the search varies)."""
    from harness.estimate.meta_model import prepare_model
    from harness.estimate.model import estimate_model
    from harness.estimate.run_config import compose_config, effective

    eff = effective(compose_config(list(overrides)))
    model, qbytes, _ = prepare_model(eff)

    def peak(seq_len: int, batch: int) -> float:
        shaped = {**eff, "train": {**eff["train"], "batch_size": batch, "max_seq_len": seq_len}}
        return float(estimate_model(model, shaped, qbytes, device=device, seq_len=seq_len).memory.peak)

    return frontier_rows(peak, budgets_gib, seq_lens, batches)
