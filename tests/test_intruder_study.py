"""The intruder study beyond counting: the causal test (scaling intruders), correlations on the right pairs,
seed groups, the normalised-k sweep, the bases runs are compared against, and the encoder's forgetting probe."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from scipy.stats import spearmanr

from analysis.intruder.report import load_run, weight_pairs
from analysis.intruder.tables import correlations, group_table, k_fraction_counts
from analysis.intruder.scaling import scale_intruders
from conftest import REPO, TINY, run_inprocess
from test_intruder import SPECTRUM, orthogonal_update, tall_w0


def test_scaling_an_intruder_changes_exactly_that_direction() -> None:
    w0, w = orthogonal_update(sigma=5.5)  # one intruder, ranked 9th of W's singular values
    u0 = torch.linalg.svd(w0, full_matrices=False)[0]
    scaled, n = scale_intruders(u0, w, k=10, epsilon=0.5, lam=0.5)
    assert n == 1
    u, s, vh = torch.linalg.svd(w.float(), full_matrices=False)
    change = scaled - w.float()
    # the change is -0.5 s_i u_i v_i^T for the intruder i alone: rank one, along the intruder's own vectors
    i = int(torch.argmin((u.T @ u0.float()).abs().amax(-1)[:10]))
    torch.testing.assert_close(change, -0.5 * s[i] * torch.outer(u[:, i], vh[i]), atol=1e-5, rtol=1e-4)
    expected = s.clone()
    expected[i] *= 0.5
    torch.testing.assert_close(torch.linalg.svdvals(scaled), expected.sort(descending=True).values, atol=1e-4, rtol=1e-4)
    kept, n_kept = scale_intruders(u0, w, k=10, epsilon=0.5, lam=1.0)
    assert n_kept == 1 and torch.allclose(kept, w.float())  # lambda = 1 is the run itself


def test_scaling_leaves_a_matrix_without_intruders_alone() -> None:
    w0, u0, v0 = tall_w0(SPECTRUM)
    w = w0 + 2.0 * u0[:, :2] @ v0[:, :2].T  # moves only within W0's own top directions
    scaled, n = scale_intruders(u0, w, k=10, epsilon=0.5, lam=0.3)
    assert n == 0 and torch.allclose(scaled, w.float())


def test_correlations_pair_each_run_with_its_own_forgetting_per_model() -> None:
    rng = np.random.default_rng(0)
    lm = pd.DataFrame({"model": "lm", "intruders": [0, 3, 9, 1, 5], "forgetting": [0.1, 0.4, 0.2, 0.3, 0.5],
                       "score": [0.5, 0.6, 0.55, 0.7, 0.65]})
    enc = pd.DataFrame({"model": "enc", "intruders": [2, 0, 7], "forgetting": [0.02, 0.01, 0.03],
                        "score": [0.8, 0.9, 0.85]})
    mixed = pd.concat([lm, enc]).iloc[rng.permutation(8)].reset_index(drop=True)
    found = correlations(mixed)
    rho, p = spearmanr(lm["intruders"], lm["forgetting"])
    assert found["by_model"]["lm"]["forgetting"] == {"rho": pytest.approx(rho), "p": pytest.approx(p), "n": 5}
    assert found["by_model"]["enc"]["forgetting"]["rho"] == pytest.approx(1.0)
    assert found["forgetting"]["rho"] is None  # two probes on different scales are never pooled
    alone = correlations(lm.iloc[::-1])
    assert alone["forgetting"]["rho"] == pytest.approx(rho) and alone["forgetting"]["n"] == 5
    assert correlations(lm.iloc[:2])["forgetting"]["rho"] is None  # two runs: no correlation claimed


def test_groups_keep_learning_rates_apart_and_give_intervals_from_two_seeds() -> None:
    summary = pd.DataFrame({
        "label": ["lora r=8 lr=0.002"] * 3 + ["lora r=8 lr=0.0002"],
        "model": "m", "method": "lora", "r": 8, "alpha": 16, "lr": [2e-3] * 3 + [2e-4],
        "intruders": [4, 6, 5, 0], "eps_0.5": [4, 6, 5, 0], "rel_update_mean": 0.01, "score": [0.8, 0.82, 0.81, 0.7],
        "val_score": 0.8, "forgetting": 0.1})
    groups = group_table(summary, [0.5]).set_index("label")
    assert list(groups["n_seeds"]) == [3, 1]
    assert groups.loc["lora r=8 lr=0.002", "intruders_mean"] == pytest.approx(5.0)
    assert groups.loc["lora r=8 lr=0.002", "intruders_low"] < 5.0 < groups.loc["lora r=8 lr=0.002", "intruders_high"]
    assert np.isnan(groups.loc["lora r=8 lr=0.0002", "intruders_low"])  # one seed: no interval


def test_normalised_k_counts_the_top_share_of_each_matrix() -> None:
    maxcos = np.array([[0.1, 0.9, 0.2, 0.9], [0.9, 0.1, 0.1, 0.1]], dtype=np.float32)
    arrays = {"rows": np.array([8, 4]), "cols": np.array([4, 8]), "maxcos": maxcos}
    counts = k_fraction_counts(arrays, np.array([True, True]), epsilon=0.5, fractions=(0.25, 0.5, 1.0))
    assert counts == {0.25: 1, 0.5: 1 + 1, 1.0: 2 + 3}
    assert k_fraction_counts(arrays, np.array([False, True]), 0.5, (1.0,)) == {1.0: 3}


def test_similarity_probe_sees_lost_ranking_not_rotation() -> None:
    from harness.forgetting import similarity_forgetting

    g = torch.Generator().manual_seed(0)
    e = torch.randn(20, 16, generator=g)
    q, _ = torch.linalg.qr(torch.randn(16, 16, generator=g))
    same = similarity_forgetting(e, e)
    assert same["forgetting"] == pytest.approx(0.0, abs=1e-9) and same["embedding_drift"] == pytest.approx(0.0, abs=1e-9)
    rotated = similarity_forgetting(e, e @ q)  # every vector moved, every pairwise similarity kept
    assert rotated["forgetting"] == pytest.approx(0.0, abs=1e-9) and rotated["embedding_drift"] > 0.3
    unrelated = similarity_forgetting(e, torch.randn(20, 16, generator=g))
    assert unrelated["forgetting"] > 0.7


def test_encoder_runs_record_forgetting_and_bases_follow_the_record(runs: Path) -> None:
    common = ["model=tiny-bert", *TINY, "train.max_steps=4", "train.lr=2e-2"]
    lora, lora_dir = run_inprocess([*common, "method=lora", "r=2", "targets=qv", "train.precision=bf16"], runs)
    full, full_dir = run_inprocess([*common, "method=full", "train.lr=5e-3", "train.precision=bf16-mixed"], runs)
    for result in (lora, full):
        assert result["forgetting_probe"] == "sentence-similarity"
        assert 0.0 <= result["forgetting"] <= 2.0 and result["embedding_drift"] >= 0.0
    assert full["forgetting"] > 0.0  # 4 steps at 5e-3 move every weight of a tiny encoder
    # W0 is the base in the precision the run trained from: float32 for bf16-mixed full FT, bf16 for the adapter
    full_pairs, lora_pairs = weight_pairs(load_run(full_dir)), weight_pairs(load_run(lora_dir))
    assert {w0.dtype for w0, _ in full_pairs.values()} == {torch.float32}
    assert {w0.dtype for w0, _ in lora_pairs.values()} == {torch.bfloat16}
    # the float32 base is the untouched random tiny model, not a bf16 rounding of it
    from harness.assets import cache_dir
    from harness.models import load_model, load_tokenizer
    from conftest import compose

    cfg = compose(["model=tiny-bert"])
    fresh = load_model(cfg.model, cache_dir(None), precision="fp32", tokenizer=load_tokenizer(cfg.model, cache_dir(None)),
                       labels=["negative", "neutral", "positive"])
    name = next(iter(full_pairs))
    assert torch.equal(full_pairs[name][0], fresh.get_submodule(name).weight.detach())


def test_qlora_is_compared_with_the_dequantised_weights_it_trained_on(runs: Path) -> None:
    pytest.importorskip("bitsandbytes")
    _, qlora_dir = run_inprocess(["model=tiny-llama", *TINY, "method=qlora", "r=2", "targets=qv", "train.lr=2e-2"], runs)
    pairs = weight_pairs(load_run(qlora_dir))
    from harness.runfolder import open_run

    base, _, record = open_run(qlora_dir, finished=True).load_base(dequantize=True)
    name = next(iter(pairs))
    assert "de-quantised" in record["base"]
    assert torch.equal(pairs[name][0], base.get_submodule(name).weight.detach())
    quantised = open_run(qlora_dir, finished=True).load_base()[0].get_submodule(name).weight
    assert quantised.__class__.__name__ == "Params4bit"  # what training saw; the pairs use its de-quantised values


def test_scale_intruders_command_writes_the_lambda_table(runs: Path, tmp_path: Path) -> None:
    common = ["model=tiny-bert", *TINY, "train.max_steps=6", "train.lr=5e-2", "train.precision=fp32"]
    run_inprocess([*common, "method=lora", "r=2", "targets=qv"], runs)
    run_inprocess([*common, "method=full", "train.lr=5e-3"], runs)
    out = tmp_path / "report"
    proc = subprocess.run([sys.executable, "-m", "analysis.intruder", str(runs), "--k", "4", "--epsilon", "0.9",
                           "--scale-intruders", "0.5,1.0", "--out", str(out)], cwd=REPO, capture_output=True,
                          text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    table = pd.read_csv(out / "intruder_scaling.csv")
    summary = pd.read_csv(out / "intruder_summary.csv").set_index("run_id")
    for run_id, part in table.groupby("run_id"):
        unscaled = part[part["lambda"] == 1.0].iloc[0]
        assert unscaled["d_score"] == 0 and unscaled["intruders_left"] == summary.loc[run_id, "intruders"]
        if summary.loc[run_id, "intruders"] > 0:
            half = part[part["lambda"] == 0.5].iloc[0]
            assert half["directions_scaled"] == unscaled["directions_scaled"] > 0
        else:
            assert list(part["lambda"]) == [1.0]  # nothing to scale: only the run itself
    assert (out / "intruder_scaling.png").stat().st_size > 5000
    groups = pd.read_csv(out / "intruder_groups.csv")
    assert set(groups["n_seeds"]) == {1} and groups["intruders_low"].isna().all()
    bad = subprocess.run([sys.executable, "-m", "analysis.intruder", str(runs), "--scale-intruders", "1.5"], cwd=REPO,
                         capture_output=True, text=True, timeout=300)
    assert bad.returncode == 2 and "fractions kept" in bad.stderr


def test_norm_matched_bins_compare_ranks_at_the_same_update_size() -> None:
    from analysis.intruder.tables import norm_matched

    summary = pd.DataFrame({
        "method": ["lora"] * 6 + ["full"], "r": [1, 64, 1, 64, 8, 8, None],
        "rel_update_mean": [0.01, 0.011, 0.1, 0.1, 0.05, 0.01, 0.02], "intruders": [5, 0, 9, 2, 3, 1, 0],
        "label": ["a", "b", "c", "d", "e", "f", "g"]})
    table = norm_matched(summary, n_bins=2)
    assert set(table["bin"]) == {0, 1} and "g" not in ";".join(table["labels"])  # full FT has no rank
    low = table[table["bin"] == 0].set_index("r")
    assert low.loc[1, "intruders_mean"] == 5 and low.loc[64, "intruders_mean"] == 0 and low.loc[8, "n_runs"] == 1
    high = table[table["bin"] == 1].set_index("r")
    assert high.loc[1, "intruders_mean"] == 9 and high.loc[64, "intruders_mean"] == 2
    assert norm_matched(summary[summary["r"] == 1]).empty  # one rank: nothing to compare


def test_the_same_run_in_two_folders_counts_once(tmp_path: Path) -> None:
    import shutil

    from analysis.intruder.report import collect_runs

    record = {"run_id": "classify_m_lora_r1_s0_abc", "status": "ok", "saved_to": "adapter", "method": "lora",
              "r": 1, "alpha": 2, "lr": 2e-3, "model": "tiny-llama", "config": {"model": {"name": "tiny-llama"}}}
    first = tmp_path / "a" / record["run_id"]
    (first / "adapter").mkdir(parents=True)  # a copy without its weights would be skipped as such
    (first / "result.json").write_text(json.dumps(record))
    shutil.copytree(tmp_path / "a", tmp_path / "b")
    runs = collect_runs([tmp_path / "a", tmp_path / "b"])
    assert len(runs) == 1 and runs[0].path == first


def test_one_config_reached_by_two_sweeps_is_one_seed() -> None:
    from analysis.intruder.tables import correlations, group_table

    summary = pd.DataFrame({"label": ["a", "a", "a", "b", "b", "c"], "seed": [0, 0, 1, 0, 1, 0],
                            "model": ["m"] * 6, "method": ["lora"] * 6, "r": [1, 1, 1, 8, 8, 64], "alpha": [2] * 6,
                            "lr": [1e-3] * 6, "intruders": [4, 4, 6, 1, 2, 0], "rel_update_mean": [0.1] * 6,
                            "score": [0.8] * 6, "val_score": [0.8] * 6, "forgetting": [0.5, 0.5, 0.7, 0.2, 0.3, 0.1]})
    groups = group_table(summary, []).set_index("label")
    assert groups.loc["a", "n_seeds"] == 2 and groups.loc["a", "intruders_mean"] == 5
    assert correlations(summary)["forgetting"]["n"] == 5
