"""This machine's matmul limit: GFLOP/s of `torch.matmul` per dtype, the denominator of model FLOP utilisation.

    python -m benchmarks.matmul                 # 2048x2048 bf16 and fp32, plus the bundled model's shapes

A square 2048 product is the usual "peak"; the model-shaped products (tokens-per-step x hidden x intermediate of
SmolLM2-135M) show what the same kernels reach on the sizes training actually runs. Medians of repeats, because
the CPU is shared and single timings swing several-fold.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import torch

DTYPES = {"bf16": torch.bfloat16, "fp32": torch.float32}
# (m, k, n): 2048 square, then SmolLM2-135M at ~700 tokens per step: q/o projections, MLP up, lm_head.
SHAPES = {"2048x2048x2048": (2048, 2048, 2048), "model_attn_700x576x576": (700, 576, 576),
          "model_mlp_700x576x1536": (700, 576, 1536), "model_lm_head_700x576x49152": (700, 576, 49152)}


def matmul_gflops(m: int, k: int, n: int, dtype: torch.dtype, repeats: int = 10, min_seconds: float = 0.2) -> dict:
    """Median GFLOP/s over `repeats` timings, each long enough (>= min_seconds) to hide timer noise."""
    a = torch.randn(m, k, dtype=dtype)
    b = torch.randn(k, n, dtype=dtype)
    for _ in range(3):  # warm-up: thread pool, oneDNN/AMX kernel selection
        torch.matmul(a, b)
    t0 = time.perf_counter()
    torch.matmul(a, b)
    one = max(time.perf_counter() - t0, 1e-6)
    inner = max(1, int(min_seconds / one))
    rates = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        for _ in range(inner):
            torch.matmul(a, b)
        rates.append(2 * m * k * n * inner / (time.perf_counter() - t0) / 1e9)
    return {"gflops_median": round(statistics.median(rates), 1), "gflops_max": round(max(rates), 1),
            "repeats": repeats, "inner": inner}


EMULATED_PROBE = "512x512x512"  # bf16 without AMX / AVX512-BF16 runs at ~0.3 GFLOP/s: a 2048^3 product takes ~1 min


def measure(repeats: int = 10, shapes: list[str] | None = None) -> dict:
    """{dtype: {shape: {...}}} plus the torch thread count the numbers were taken with. Where bf16 is emulated
    (`harness.config.native_bf16()` False) bf16 is timed on one small product only (`emulated: true`)."""
    from harness.config import native_bf16

    out: dict = {"torch_threads": torch.get_num_threads(), "torch": torch.__version__, "rates": {},
                 "bf16_native": native_bf16()}
    for name, dtype in DTYPES.items():
        if name == "bf16" and not out["bf16_native"]:
            out["rates"][name] = {EMULATED_PROBE: matmul_gflops(512, 512, 512, dtype, repeats=3) | {"emulated": True}}
            continue
        out["rates"][name] = {s: matmul_gflops(*SHAPES[s], dtype, repeats) for s in (shapes or SHAPES)}
    return out


def peak(matmul: dict, dtype: str) -> float:
    """GFLOP/s of the square product for `dtype` (2048^3; the small probe where bf16 is emulated)."""
    rates = matmul["rates"][dtype]
    return (rates.get("2048x2048x2048") or rates[EMULATED_PROBE])["gflops_median"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=10)
    args = parser.parse_args()
    print(json.dumps(measure(args.repeats), indent=2))


if __name__ == "__main__":
    main()
