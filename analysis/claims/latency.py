"""Serving-latency ratios from serve_bench.json (claim 12) with intervals from paired rounds.

harness.adapters.serve_bench runs every mode once per round, back to back, on the same prompts, and records each
round's wall time per mode (`modes[mode][batch]["samples_full_s"]`, in round order). The ratio of two modes
within one round cancels drift between rounds (other processes, thermal state); the interval is a Student-t
interval on the rounds' log ratios, reported as a ratio (the geometric mean with its 95% interval)."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np
from scipy import stats


def paired_ratio_interval(numerator: Sequence[float], denominator: Sequence[float],
                          confidence: float = 0.95) -> tuple[float, float, float, int]:
    """(geometric mean of numerator/denominator per round, low, high, rounds): t-interval on the log ratios;
    low and high are nan for a single round."""
    num, den = np.asarray(numerator, dtype=float), np.asarray(denominator, dtype=float)
    n = min(len(num), len(den))
    logs = np.log(num[:n] / den[:n])
    if n == 0:
        return math.nan, math.nan, math.nan, 0
    mean = float(logs.mean())
    if n < 2:
        return math.exp(mean), math.nan, math.nan, n
    half = stats.t.ppf(0.5 + confidence / 2, n - 1) * float(logs.std(ddof=1)) / math.sqrt(n)
    return math.exp(mean), math.exp(mean - half), math.exp(mean + half), n


def round_ratios(record: dict[str, Any]) -> list[dict[str, Any]]:
    """Per batch size of one serve_bench record: merged / base and unmerged / merged as paired-round intervals;
    `rounds` is 0 (and the intervals nan) for a record without per-round samples (an old file: medians only)."""
    modes = record.get("modes") or {}
    if not {"base", "merged", "unmerged"} <= set(modes):
        return []
    rows = []
    for batch in sorted(modes["merged"], key=int):
        cells = {m: modes[m][batch] for m in ("base", "merged", "unmerged")}
        samples = {m: c.get("samples_full_s") for m, c in cells.items()}
        row: dict[str, Any] = {"run": record.get("run"), "batch": int(batch)}
        for name, num, den in (("merged_vs_base", "merged", "base"), ("unmerged_vs_merged", "unmerged", "merged")):
            if samples[num] and samples[den]:
                mean, low, high, n = paired_ratio_interval(samples[num], samples[den])
            else:  # medians only: the point ratio, no interval
                mean, low, high, n = cells[num]["ms_per_token"] / cells[den]["ms_per_token"], math.nan, math.nan, 0
            row |= {name: mean, f"{name}_low": low, f"{name}_high": high, "rounds": n}
        rows.append(row)
    return rows


def describe(row: dict[str, Any]) -> str:
    """`run batch 4 (9 rounds): merged +5.4% [+1.0, +9.9] vs base, unmerged +5.1% [...] vs merged`."""
    def pct(name: str) -> str:
        value, low, high = row[name], row[f"{name}_low"], row[f"{name}_high"]
        interval = "" if math.isnan(low) else f" [{100 * (low - 1):+.1f}, {100 * (high - 1):+.1f}]"
        return f"{100 * (value - 1):+.1f}%{interval}"

    rounds = f"{row['rounds']} paired rounds" if row["rounds"] else "no per-round data: medians only"
    return (f"{row['run']} batch {row['batch']} ({rounds}): merged {pct('merged_vs_base')} vs base, "
            f"unmerged {pct('unmerged_vs_merged')} vs merged")
