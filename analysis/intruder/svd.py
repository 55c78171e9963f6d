"""Intruder dimensions on plain tensors: the SVD comparison of a tuned matrix W with its pre-trained W0
(Shuttleworth et al., arXiv:2410.21228, Definition 3.1), batched by shape, with W0's singular vectors cached.
Run folders, tables and figures are in analysis/intruder/report.py, analysis/intruder/tables.py, analysis/intruder/plots.py."""

from __future__ import annotations

import os
from collections import defaultdict
from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np
import torch
from scipy.stats import entropy


def effective_rank(singular_values: Sequence[float] | np.ndarray) -> float:
    """Roy & Vetterli's effective rank, exp(entropy of s / sum s): 1 for a rank-1 update, n for n equal values.
    Low values mean the update concentrates in few directions (what LoRA's rank limit enforces)."""
    s = np.asarray(singular_values, dtype=np.float64)
    s = s[np.isfinite(s) & (s > 0)]
    return float(np.exp(entropy(s))) if s.size else 0.0


def _groups(shapes: dict[str, tuple[int, ...]], device: torch.device) -> Iterator[list[str]]:
    """Names grouped by matrix shape, in chunks small enough that one stacked SVD fits in memory."""
    budget = (8 if device.type == "cuda" else 1) * 2**30
    by_shape: dict[tuple[int, ...], list[str]] = defaultdict(list)
    for name, shape in shapes.items():
        by_shape[tuple(shape)].append(name)
    for shape, names in by_shape.items():
        per_chunk = max(1, budget // (shape[0] * shape[1] * 4 * 6))  # W, W0, U, V, W - W0, products
        for i in range(0, len(names), per_chunk):
            yield names[i:i + per_chunk]


def _stack(tensors: list[torch.Tensor], device: torch.device) -> torch.Tensor:
    return torch.stack([t.to(device=device, dtype=torch.float32) for t in tensors])


def pretrained_bases(w0: dict[str, torch.Tensor], device: torch.device, cache: Path | None) -> dict[str, torch.Tensor]:
    """Left singular vectors (all of them) of each pre-trained matrix; read from `cache` when an earlier call
    computed them, since every run of a base model compares against the same W0."""
    from safetensors.torch import load_file, save_file

    bases: dict[str, torch.Tensor] = {}
    missing: dict[str, torch.Tensor] = {}
    for name, w in w0.items():
        stored = cache / f"{name}.safetensors" if cache else None
        if stored is not None and stored.exists():
            tensors = load_file(stored)
            if tuple(tensors["shape"].tolist()) == tuple(w.shape):
                bases[name] = tensors["U"]
                continue
        missing[name] = w
    for group in _groups({n: tuple(w.shape) for n, w in missing.items()}, device):
        u, s, _ = torch.linalg.svd(_stack([missing[n] for n in group], device), full_matrices=False)
        for i, name in enumerate(group):
            bases[name] = u[i].cpu().contiguous()
            if cache is not None:
                cache.mkdir(parents=True, exist_ok=True)
                tmp = cache / f".{name}.{os.getpid()}.tmp"
                save_file({"U": bases[name], "S": s[i].cpu(), "shape": torch.tensor(missing[name].shape)}, tmp)
                os.replace(tmp, cache / f"{name}.safetensors")  # readers never see half a file
    return bases


def analyse_pairs(pairs: dict[str, tuple[torch.Tensor, torch.Tensor]], k_max: int | None = None,
                  device: torch.device | str = "cpu", cache: Path | None = None) -> dict[str, np.ndarray]:
    """For each (W0, W): max |cos| of W's top-k_max (default: every) left singular vectors against all of W0's,
    and the singular values of the update W - W0. Counts for any k <= k_max and any epsilon follow without
    another SVD."""
    device = torch.device(device)
    names = list(pairs)
    index = {n: i for i, n in enumerate(names)}
    width = max(min(pairs[n][0].shape) for n in names)
    k_max = width if k_max is None else k_max
    maxcos = np.full((len(names), k_max), np.nan, np.float32)
    update_sv = np.full((len(names), width), np.nan, np.float32)
    w0_fro = np.zeros(len(names), np.float32)
    bases = pretrained_bases({n: pairs[n][0] for n in names}, device, cache)
    for group in _groups({n: tuple(pairs[n][0].shape) for n in names}, device):
        w0 = _stack([pairs[n][0] for n in group], device)
        w = _stack([pairs[n][1] for n in group], device)
        u, s, _ = torch.linalg.svd(w, full_matrices=False)
        k = min(k_max, s.shape[-1])
        cos = (u[..., :k].mT @ _stack([bases[n] for n in group], device)).abs().amax(-1)
        delta_sv = torch.linalg.svdvals(w - w0)
        fro = torch.linalg.matrix_norm(w0)
        for i, name in enumerate(group):
            j = index[name]
            maxcos[j, :k], update_sv[j, :delta_sv.shape[-1]] = cos[i].cpu().numpy(), delta_sv[i].cpu().numpy()
            w0_fro[j] = fro[i].item()
    rows, cols = zip(*(tuple(pairs[n][0].shape) for n in names))
    return {"modules": np.array(names), "rows": np.array(rows), "cols": np.array(cols), "maxcos": maxcos,
            "update_sv": update_sv, "w0_fro": w0_fro}


def intruder_counts(maxcos: np.ndarray, k: int, epsilon: float) -> np.ndarray:
    """Per matrix: how many of the top-k singular vectors have max |cos| < epsilon (NaN: no such vector)."""
    return (maxcos[:, :k] < epsilon).sum(axis=1)


def count_intruders(w0: torch.Tensor, w: torch.Tensor, k: int = 10, epsilon: float = 0.5) -> int:
    """Intruder dimensions of one matrix pair (Definition 3.1 of the paper)."""
    return int(intruder_counts(analyse_pairs({"w": (w0, w)}, k)["maxcos"], k, epsilon)[0])
