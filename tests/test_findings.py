"""Claims 11, 12 and 14 redone (exact small-sample statistics, paired latency rounds, memory at the quoted
workload and its frontier), the findings page and the README block, all on hand-made evidence."""

from __future__ import annotations

import itertools
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from scipy import stats

from analysis.claims.rules import CLAIMS, INCONCLUSIVE, NOT_RUN, REFUTED, SUPPORTED, Evidence, ledger
from analysis.exact import count_interval, permutation_rho, runs_needed, smallest_p
from analysis.claims.findings import BEGIN, END, SUMMARY_LINES, findings_markdown, update_readme_block
from harness.estimate.frontier import frontier, frontier_rows


def empty_evidence(**kw) -> Evidence:
    return Evidence(retention=pd.DataFrame(columns=["task", "model", "method", "cell", "n_seeds", "lrs_tried", "r",
                                                    "targets", "retention_mean", "retention_low", "retention_high",
                                                    "gain_mean", "gain_low", "gain_high", "val_gain", "learned"]),
                    runs=pd.DataFrame(columns=["cell", "variant", "method", "r", "score", "params_trainable"]), **kw)


def verdict(number: int, ev: Evidence):
    return next(run for n, _, run in CLAIMS if n == number)(ev)


# ---- exact statistics ----------------------------------------------------------------------------------------

@pytest.mark.parametrize("counts", [[0, 0, 0], [0, 1, 0], [0, 0, 12], [3, 2, 4], [1]])
def test_count_interval_never_goes_below_zero_and_holds_the_mean(counts) -> None:
    mean, low, high = count_interval(counts)
    assert low >= 0 and low <= mean <= high and mean == pytest.approx(np.mean(counts))
    if not any(counts):
        assert high > 0  # three zeros do not prove the rate is zero


def test_count_interval_covers_a_poisson_mean() -> None:
    rng = np.random.default_rng(0)
    hits = [low <= 2.0 <= high for _, low, high in (count_interval(rng.poisson(2.0, 3)) for _ in range(2000))]
    assert np.mean(hits) >= 0.93


def _brute_force_p(x, y) -> float:
    observed = stats.spearmanr(x, y)[0]
    null = np.array([stats.spearmanr(x, np.asarray(y)[list(p)])[0] for p in itertools.permutations(range(len(x)))])
    return min(1.0, 2 * min(np.mean(null <= observed + 1e-12), np.mean(null >= observed - 1e-12)))


@pytest.mark.parametrize("x,y", [([1, 2, 3, 4, 5], [2, 1, 4, 3, 5]), ([0.1, 0.5, 0.2, 0.9, 0.4, 0.3], [0, 0, 1, 3, 0, 2]),
                                 ([3, 1, 2, 5, 4], [10, 30, 20, 40, 50])])
def test_permutation_p_is_exact_for_small_n_and_equals_enumeration(x, y) -> None:
    rho, p, exact = permutation_rho(x, y)
    assert exact and rho == pytest.approx(stats.spearmanr(x, y)[0]) and p == pytest.approx(_brute_force_p(x, y))


def test_ties_set_a_floor_on_p_and_the_runs_needed() -> None:
    x, y = [0.1, 0.2, 0.3, 0.9], [0, 0, 0, 5]      # three runs tied at 0 intruders
    assert smallest_p(x, y) == pytest.approx(0.5) and permutation_rho(x, y)[1] == pytest.approx(0.5)
    assert runs_needed(x, y) == 7                   # 5 of 7 tied: 2 * 5! / 7! = 0.048
    assert runs_needed([1, 2, 3, 4], [4, 3, 2, 1]) == 5  # untied: 2 / 5! = 0.017 (4 runs: 2 / 24 = 0.083)


# ---- claim 11 ------------------------------------------------------------------------------------------------

def _intruder_evidence(r1_counts, links=None) -> Evidence:
    ranks = [1, 1, 1, 8, 8, 8, 64, 64, 64]
    counts = list(r1_counts) + [3, 2, 4, 0, 1, 0]
    summary = pd.DataFrame({"label": [f"lora r={r}" for r in ranks] + ["full"] * 3, "model": "m",
                            "method": ["lora"] * 9 + ["full"] * 3, "r": ranks + [np.nan] * 3,
                            "seed": [0, 1, 2] * 4, "intruders": counts + [0, 0, 0]})
    groups = pd.DataFrame([{"label": "full", "model": "m", "method": "full", "r": np.nan, "n_seeds": 3},
                           {"label": "lora r=1", "model": "m", "method": "lora", "r": 1, "n_seeds": 3}])
    return empty_evidence(intruder_groups=groups, intruder_summary=summary, forgetting_links=links or [],
                          intruder_correlations={"forgetting": {"rho": 0.9, "p": 0.001, "n": 9}})


def test_claim_11_counts_with_exact_intervals_and_a_permutation_test() -> None:
    v = verdict(11, _intruder_evidence([9, 8, 7]))
    assert v.verdict == SUPPORTED, v.evidence
    assert "[0.0, 1.2]" in v.evidence[1]            # full FT's three zeros: an upper bound, never a negative low


def test_claim_11_with_tied_runs_says_how_many_runs_it_needs() -> None:
    links = [{"model": "m", "source": "a", "pairs": [(0, 0.1), (0, 0.2), (0, 0.3), (5, 0.9)]}]
    v = verdict(11, _intruder_evidence([9, 8, 7], links))
    assert v.verdict == INCONCLUSIVE
    assert "cannot reach p<0.05 with these 4 runs" in v.evidence[-1] and "needs about 7 runs" in v.evidence[-1]


def test_claim_11_a_one_run_group_without_lowish_counts_is_not_above_full() -> None:
    assert "(a) no" in verdict(11, _intruder_evidence([1, 0, 0])).estimate


# ---- claim 12 ------------------------------------------------------------------------------------------------

def _serve(merged: float, unmerged: float, rounds: bool = True) -> dict:
    drift = np.array([1.0, 1.6, 0.8, 1.3, 1.1, 0.9, 1.4])      # the machine's load changes from round to round
    noise = np.array([1.0, 1.004, 0.997, 1.002, 0.999, 1.003, 0.998])
    times = {"base": drift, "merged": drift * merged * noise, "unmerged": drift * merged * unmerged * noise[::-1]}
    cell = {m: {"4": {"ms_per_token": float(np.median(t)) * 10} | ({"samples_full_s": t.tolist()} if rounds else {})}
            for m, t in times.items()}
    return {"run": "x", "modes": cell}


@pytest.mark.parametrize("merged,unmerged,expected", [(1.0, 1.1, SUPPORTED), (1.2, 1.1, REFUTED), (1.07, 1.1, INCONCLUSIVE)])
def test_claim_12_interval_from_paired_rounds(merged, unmerged, expected) -> None:
    v = verdict(12, empty_evidence(serve=[_serve(merged, unmerged)]))
    assert v.verdict == expected and "7 paired rounds" in v.evidence[0]


def test_paired_rounds_cancel_drift_between_rounds() -> None:
    from analysis.claims.latency import round_ratios

    row = round_ratios(_serve(1.05, 1.1))[0]
    assert row["merged_vs_base_low"] < 1.05 < row["merged_vs_base_high"] and row["merged_vs_base_high"] < 1.06


def test_claim_12_says_no_per_round_data_for_old_files() -> None:
    v = verdict(12, empty_evidence(serve=[_serve(1.0, 1.1, rounds=False)]))
    assert v.verdict == NOT_RUN and "no per-round data" in v.missing and "no per-round data" in v.evidence[0]


# ---- claim 14 and the frontier -------------------------------------------------------------------------------

def _est(gb: float, **workload) -> dict:
    return {"memory": {"peak": gb * 1e9}, "batch_size": 1, "seq_len": 512, "precision": "bf16",
            "optim": "adamw_torch", "checkpointing": True} | workload


@pytest.mark.parametrize("qlora_gb,expected", [(12, SUPPORTED), (30, REFUTED), (4, REFUTED), (7, INCONCLUSIVE)])
def test_claim_14_at_the_claims_workload(qlora_gb, expected) -> None:
    est = {"7b-full-bf16": _est(66), "7b-lora": _est(27), "7b-qlora": _est(qlora_gb, optim="paged_adamw_8bit"),
           "70b-full": _est(1200, precision="bf16-mixed")}
    v = verdict(14, empty_evidence(estimates=est))
    assert v.verdict == expected
    assert all("batch 1 x 512 tokens" in e and "checkpointing on" in e for e in v.evidence)


def test_claim_14_rows_are_estimated_at_the_quoted_workload() -> None:
    from analysis.claims.memory import CLAIM_14

    for name, (overrides, _) in CLAIM_14.items():
        assert {"train.batch_size=1", "train.max_seq_len=512", "train.gradient_checkpointing=true"} <= set(overrides)
    assert "train.optim=paged_adamw_8bit" in CLAIM_14["7b-qlora"][0]


def _monotone(rows: list[dict]) -> None:
    for s in {r["seq_len"] for r in rows}:
        batches = [r["batch"] for r in sorted((r for r in rows if r["seq_len"] == s), key=lambda r: r["budget_gib"])]
        assert batches == sorted(batches), (s, batches)


def test_frontier_grows_with_memory_on_a_hand_made_peak() -> None:
    gib = 2 ** 30
    rows = frontier_rows(lambda s, b: 5 * gib + b * s * 2e5, (4, 12, 24, 80))
    _monotone(rows)
    by = {(r["budget_gib"], r["seq_len"]): r["batch"] for r in rows}
    assert by[(4, 512)] == 0 and by[(12, 512)] == 64 and by[(80, 4096)] == 64   # 5 GiB + b x s x 0.2 MB


def test_frontier_from_the_estimator_is_monotone() -> None:
    rows = frontier(["model=tiny-llama", "method=lora", "r=8"], budgets_gib=(0.6, 1, 4), seq_lens=(512, 2048),
                    batches=(1, 2, 4, 8, 16, 32, 64))
    _monotone(rows)
    assert any(r["batch"] for r in rows) and all(r["peak_gib"] is None or r["peak_gib"] <= r["budget_gib"] for r in rows)


# ---- the findings page and the README block ------------------------------------------------------------------

def test_findings_page_opens_with_a_self_contained_summary() -> None:
    ev = empty_evidence(estimates={"lora": {"params_trainable": 6_815_744, "trainable_pct": 0.085,
                                            "params_total": 8_030_000_000}})
    verdicts = ledger(ev)
    page = findings_markdown(ev, verdicts, [Path("results/study")], "study/claims/claims.md")
    head = page.split("\n## ", 1)[0].strip("\n").splitlines()
    assert len(head) <= SUMMARY_LINES
    assert head[1].startswith(f"1 supported, {len(verdicts) - 1} not run.")  # only the kinds that occur
    assert any(line.startswith("- **supported**: 15.") for line in head)
    assert page.count("\n## ") == len(verdicts) and "study/claims/claims.md#claim-14" in page


def test_readme_block_is_rewritten_only_between_markers(tmp_path) -> None:
    page = "# Findings\n\n2 supported.\n- **supported**: 4. x\n\nLedger: [a](study/claims/claims.md)\n\n## 1. x\nbody\n"
    readme = tmp_path / "README.md"
    readme.write_text(f"intro\n{BEGIN}\nold\n{END}\nrest\n")
    assert update_readme_block(readme, page, tmp_path / "results" / "FINDINGS.md")
    text = readme.read_text()
    assert text.startswith("intro\n" + BEGIN) and text.endswith(END + "\nrest\n") and "old" not in text
    assert "2 supported." in text and "](results/study/claims/claims.md)" in text and "body" not in text
    plain = tmp_path / "PLAIN.md"
    plain.write_text("no markers\n")
    assert not update_readme_block(plain, page) and plain.read_text() == "no markers\n"
    assert not update_readme_block(tmp_path / "missing.md", page)
