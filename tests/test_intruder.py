"""Intruder dimensions: constructed matrices whose answer is known, then tiny LoRA and full-FT runs end to end."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from analysis.intruder.report import intruder_section, load_run, weight_pairs
from analysis.intruder.svd import analyse_pairs, count_intruders, effective_rank
from conftest import REPO, TINY, run_inprocess

ROWS, COLS = 64, 16  # a tall W0: its 16 left singular vectors leave 48 directions of R^64 untouched


def tall_w0(singular_values: list[float], seed: int = 0) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """W0 = U diag(s) V^T with known factors; also returns U (64 x 16) and V (16 x 16)."""
    g = torch.Generator().manual_seed(seed)
    u, _ = torch.linalg.qr(torch.randn(ROWS, COLS, generator=g, dtype=torch.float64))
    v, _ = torch.linalg.qr(torch.randn(COLS, COLS, generator=g, dtype=torch.float64))
    return u @ torch.diag(torch.tensor(singular_values, dtype=torch.float64)) @ v.T, u, v


# 15 well-separated values from 10 down to 2, then a small last one (0.1)
SPECTRUM = [float(x) for x in np.linspace(10, 2, 15)] + [0.1]


def orthogonal_update(sigma: float) -> tuple[torch.Tensor, torch.Tensor]:
    """W = W0 + sigma u v_min^T with u orthogonal to every left singular vector of W0: W gains the singular
    value sqrt(0.1^2 + sigma^2) whose left vector has |cos| 0.1 / that value with W0's last vector, 0 with the rest."""
    w0, u0, v0 = tall_w0(SPECTRUM)
    g = torch.Generator().manual_seed(1)
    x = torch.randn(ROWS, generator=g, dtype=torch.float64)
    x -= u0 @ (u0.T @ x)
    x /= x.norm()
    return w0, w0 + sigma * torch.outer(x, v0[:, -1])


def test_orthogonal_update_inside_top_k_is_one_intruder() -> None:
    w0, w = orthogonal_update(sigma=5.5)  # singular value ~5.5 ranks 9th of W's, inside the top 10
    assert count_intruders(w0, w, k=10, epsilon=0.5) == 1
    assert count_intruders(w0, w, k=10, epsilon=0.05) == 1  # its max |cos| is 0.1 / 5.5 ~ 0.018
    assert count_intruders(w0, w, k=10, epsilon=0.01) == 0
    assert count_intruders(w0, w, k=5, epsilon=0.5) == 0  # ranked 9th: outside the top 5


def test_orthogonal_update_outside_top_k_is_not_found() -> None:
    w0, w = orthogonal_update(sigma=1.5)  # ~1.5 ranks 16th, below all of W0's other values
    assert count_intruders(w0, w, k=10, epsilon=0.5) == 0
    assert count_intruders(w0, w, k=16, epsilon=0.5) == 1  # the same vector counts once k reaches it


def test_update_inside_the_top_subspace_has_no_intruder() -> None:
    w0, u0, v0 = tall_w0(SPECTRUM)
    mix = torch.randn(3, 3, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    w = w0 + 4.0 * u0[:, :3] @ mix @ v0[:, :3].T  # rotates and rescales within W0's top 3 directions
    assert not torch.allclose(w, w0)
    # a unit vector in a 3-dimensional span has |cos| >= 1/sqrt(3) = 0.577 with one of the span's basis vectors
    assert count_intruders(w0, w, k=10, epsilon=0.5) == 0


def test_rescaling_has_no_intruder() -> None:
    w0, _, _ = tall_w0(SPECTRUM)
    assert count_intruders(w0, 1.7 * w0, k=10, epsilon=0.9) == 0
    assert count_intruders(w0, 0.3 * w0, k=16, epsilon=0.9) == 0


def test_random_update_of_a_square_matrix_gives_intruders() -> None:
    """Sanity of the other direction: a large random (hence unaligned) update replaces the top directions."""
    g = torch.Generator().manual_seed(3)
    w0 = torch.randn(128, 128, generator=g)
    w = w0 + 30 * torch.randn(128, 4, generator=g) @ torch.randn(4, 128, generator=g) / 128**0.5
    assert count_intruders(w0, w, k=10, epsilon=0.5) >= 3


def test_effective_rank_known_values() -> None:
    assert effective_rank([3.0, 0, 0, 0]) == pytest.approx(1.0)
    assert effective_rank([2.0] * 8) == pytest.approx(8.0)
    assert 1.0 < effective_rank([4.0, 1.0, 0.5]) < 3.0
    assert effective_rank([]) == 0.0


def test_batched_svd_matches_one_at_a_time_and_caches_the_pretrained_bases(tmp_path: Path) -> None:
    g = torch.Generator().manual_seed(4)
    pairs = {f"m{i}": (w0 := torch.randn(*shape, generator=g), w0 + 0.5 * torch.randn(*shape, generator=g))
             for i, shape in enumerate([(40, 12), (40, 12), (12, 40), (40, 12)])}
    together = analyse_pairs(pairs, k_max=6, cache=tmp_path / "svd")
    assert sorted(p.name for p in (tmp_path / "svd").iterdir()) == [f"m{i}.safetensors" for i in range(4)]
    for i, name in enumerate(pairs):
        alone = analyse_pairs({name: pairs[name]}, k_max=6)
        np.testing.assert_allclose(together["maxcos"][i], alone["maxcos"][0], atol=1e-5)
        np.testing.assert_allclose(together["update_sv"][i], alone["update_sv"][0], atol=1e-4)
    # a second call reads W0's singular vectors from the cache: poison one and the answer moves
    from safetensors.torch import load_file, save_file

    stored = load_file(tmp_path / "svd" / "m0.safetensors")
    save_file({**stored, "U": torch.zeros_like(stored["U"])}, tmp_path / "svd" / "m0.safetensors")
    again = analyse_pairs(pairs, k_max=6, cache=tmp_path / "svd")
    assert np.all(again["maxcos"][0] == 0) and np.allclose(again["maxcos"][1], together["maxcos"][1])


def test_tiny_lora_and_full_runs_end_to_end(runs: Path, tmp_path: Path) -> None:
    common = ["model=tiny-llama", *TINY, "train.max_steps=6", "train.lr=2e-2", "train.precision=fp32"]
    _, lora_dir = run_inprocess([*common, "method=lora", "r=2", "targets=qv"], runs)
    _, full_dir = run_inprocess([*common, "method=full", "train.lr=5e-3"], runs)

    # the merged LoRA weight is W0 + B A * alpha / r, read straight from the adapter file
    from safetensors.torch import load_file

    pairs = weight_pairs(load_run(lora_dir))
    assert len(pairs) == 4  # 2 layers x (q_proj, v_proj)
    adapter = load_file(lora_dir / "adapter" / "adapter_model.safetensors")
    name = "model.layers.1.self_attn.v_proj"
    a, b = (adapter[f"base_model.model.{name}.lora_{x}.weight"] for x in "AB")
    w0, w = pairs[name]
    torch.testing.assert_close(w - w0.float(), b @ a * (4 / 2), atol=1e-6, rtol=1e-4)
    assert (w - w0).abs().max() > 1e-3  # the run moved the weights

    out = tmp_path / "report"
    figures, summary = intruder_section([runs], out, k=5, epsilons=[0.3, 0.5, 0.9], ks=[1, 5, 10])
    assert {p.name for p in figures} == {"intruders_vs_epsilon.png", "intruders_vs_rank.png", "intruders_per_layer.png",
                                         "update_spectrum.png", "intruders_vs_forgetting.png", "intruders_vs_k.png",
                                         "intruders_vs_k_fraction.png", "intruders_vs_update_norm.png"}
    assert all(p.stat().st_size > 5000 for p in figures)
    by_method = summary.set_index("method")
    assert by_method.loc["lora", "n_matrices"] == 4 and by_method.loc["full", "n_matrices"] == 4  # full FT on q, v only
    assert by_method.loc["lora", "label"] == "lora r=2 lr=0.02"  # runs sharing a label differ only in seed
    lora_result = json.loads((lora_dir / "result.json").read_text())
    assert by_method.loc["lora", "forgetting"] == pytest.approx(lora_result["forgetting"])  # read from the run
    full_table = pd.read_csv(full_dir / "intruders.csv")
    assert len(full_table) == 14 and full_table["compared"].sum() == 4  # 2 layers x 7 linear layers stored
    assert set(full_table.loc[full_table["compared"], "kind"]) == {"self_attn.q_proj", "self_attn.v_proj"}
    lora_table = pd.read_csv(lora_dir / "intruders.csv")
    # a rank-2 update: effective rank between 1 and 2; counts only grow with epsilon and never exceed k
    assert lora_table["update_erank"].between(1.0, 2.0 + 1e-6).all()
    assert (lora_table["eps_0.3"] <= lora_table["eps_0.5"]).all() and (lora_table["eps_0.5"] <= lora_table["eps_0.9"]).all()
    assert lora_table["eps_0.9"].max() <= 5
    assert (full_table["update_erank"] > 2.0).any()  # full FT updates are not rank-limited
    sweep = pd.read_csv(out / "intruder_sweep.csv")
    assert len(sweep) == 2 * 3 * 3
    corr = json.loads((out / "intruder_correlations.json").read_text())
    assert corr["forgetting"]["rho"] is None and corr["k"] == 5

    # the CLI reuses the stored arrays, prints the summary, and rejects bad input in one line
    proc = subprocess.run([sys.executable, "-m", "analysis.intruder", str(lora_dir), str(full_dir), "--out", str(out)],
                          cwd=REPO, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "lora r=2 lr=0.02" in proc.stdout and "2 runs analysed" in proc.stdout
    bad = subprocess.run([sys.executable, "-m", "analysis.intruder", str(tmp_path / "nowhere")], cwd=REPO,
                         capture_output=True, text=True, timeout=120)
    assert bad.returncode == 2 and bad.stderr.strip().startswith("error: ") and len(bad.stderr.strip().splitlines()) == 1
