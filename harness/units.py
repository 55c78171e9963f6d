"""Byte counts as people read them, in the two conventions the harness prints: binary units (KiB, MiB, GiB: what
`du`, PyTorch and the run records' resident sizes mean) and decimal ones (MB, GB, TB: what GPU spec sheets and
the commonly quoted fine-tuning memory tables use, so the estimator speaks them)."""

from __future__ import annotations

import math

BINARY = ((2**40, "TiB", 1), (2**30, "GiB", 1), (2**20, "MiB", 1), (2**10, "KiB", 1))
DECIMAL = ((1e12, "TB", 2), (1e9, "GB", 1), (0, "MB", 0))  # small figures still in MB: the tables compare in GB


def format_bytes(n: float | None, *, decimal: bool = False) -> str:
    """`1.5 GiB`, `12 B`; with `decimal`, `7.8 GB`, `27 MB`, `1.27 TB`. '' for a missing value (None or NaN)."""
    if n is None or (isinstance(n, float) and math.isnan(n)):
        return ""
    if decimal:
        size, unit, digits = next(row for row in DECIMAL if abs(n) >= row[0])
        return f"{n / (size or 1e6):.{digits}f} {unit}"
    for size, unit, digits in BINARY:
        if abs(n) >= size:
            return f"{n / size:.{digits}f} {unit}"
    return f"{n:.0f} B"
