"""Claims 16-21 (analysis/claims/rules_2025.py): each rule's four outcomes on hand-made records (supported,
refuted, inconclusive, not run), the continuous learning-rate optimum on synthetic data, and the placement sweep's
matched trainable counts on the real encoder's architecture."""

from __future__ import annotations

import itertools
import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

import analysis.claims.rules_2025  # noqa: F401  (registers 16-21)
from analysis.claims import stats_2025 as st
from analysis import tables
from analysis.claims.rules import CLAIMS, INCONCLUSIVE, NOT_RUN, REFUTED, SUPPORTED, Evidence, ledger
from analysis.runs import frame, label

_ids = itertools.count()


def rec(method: str, seed: int, lr: float, score: float, *, val: float | None = None, r=None, alpha=None,
        targets=None, task="classify", model="m", batch=16, steps=150, rows=2400, forgetting=math.nan,
        params=1000, base=0.33, examples=None) -> dict:
    """One ok run record as analysis.runs reads it; variant = everything but seed and lr."""
    targets = targets if method == "full" or targets else "all-linear"
    r, alpha, targets = (None, None, None) if method == "full" else (r, alpha if alpha is not None else 2 * r, targets)
    variant = f"{task}-{method}-{r}-{alpha}-{targets}-{batch}-{rows}"
    return {"run_id": f"run{next(_ids)}", "task": task, "model": model, "method": method, "r": r, "alpha": alpha,
            "targets": targets, "seed": seed, "status": "ok", "score": score, "val_score": score if val is None else val,
            "base_score": base, "base_val_score": base, "lr": lr, "forgetting": forgetting,
            "params_trainable": params, "train_steps": steps, "train_examples": examples or steps * batch,
            "train_epochs": (examples or steps * batch) / rows, "batch_size": batch, "primary_metric": "accuracy", "finished_at": "2026-12-06",
            "cell": f"{task}|{model}|fp|{rows if task == 'memorize' else ''}", "variant": variant,
            "lr_variant": f"{variant}-{lr:g}", "label": label(method, r, targets),
            "budget": f"{steps * batch} examples x 256 tokens"}


def evidence(rows: list[dict]) -> Evidence:
    df = frame(rows)
    return Evidence(retention=tables.retention(df), runs=tables.at_selected_lr(df), records=df)


def verdict(number: int, ev: Evidence):
    return next(run for n, _, run in CLAIMS if n == number)(ev)


def empty() -> Evidence:
    return Evidence(retention=pd.DataFrame(columns=["task", "method", "cell", "n_seeds", "lrs_tried", "r", "targets",
                                                    "retention_mean", "retention_low", "retention_high",
                                                    "gain_mean", "gain_low", "gain_high", "val_gain", "learned"]),
                    runs=pd.DataFrame(columns=["cell", "variant", "method", "r", "score", "params_trainable"]))


def test_claims_16_to_21_join_the_ledger_and_are_not_run_without_records() -> None:
    verdicts = ledger(empty())
    assert [v.claim for v in verdicts][-6:] == list(range(16, 22))
    late = [v for v in verdicts if v.claim >= 16]
    assert all(v.verdict == NOT_RUN and v.missing and v.rule for v in late), [(v.claim, v.verdict) for v in late]
    assert all(("arXiv" in v.rule or "Without Regret" in v.rule) and "here" in v.rule.lower() for v in late)


# ---- 16: the continuous optimum and the ratio ----------------------------------------------------------------

def curve_runs(method: str, opt: float, *, seeds=3, noise=0.002, step=2.0, n=7, centre=None, seed0=0, **kw) -> list[dict]:
    """Validation score 0.8 - 0.1 (log10(lr / opt))^2 + noise on a grid of `n` rates `step` apart around `centre`."""
    gen = np.random.default_rng(seed0)
    centre = opt if centre is None else centre
    lrs = [centre * step ** k for k in range(-(n // 2), n - n // 2)]
    return [rec(method, s, lr, 0.8 - 0.1 * math.log10(lr / opt) ** 2 + gen.normal(0, noise), **kw)
            for s in range(seeds) for lr in lrs]


def test_the_fitted_optimum_recovers_a_known_optimum_from_noisy_quadratic_data() -> None:
    truth = 3.1e-4  # between grid points
    runs = pd.DataFrame(curve_runs("lora", truth, seeds=5, noise=0.004, centre=2.5e-4, r=8))
    fit = st.optimum(st.curve(runs), st.rng())
    low, high = fit.lr_interval()
    assert abs(math.log(fit.lr / truth)) < math.log(1.2), fit.lr
    assert low < truth < high and high / low < 3
    assert not fit.edge and fit.n_seeds == 5 and fit.max_step == pytest.approx(2.0)
    # the same data, best point at the end of the grid: flagged, the optimum is the grid's end
    edge = st.optimum(st.curve(runs[runs["lr"] <= 2.6e-4]), st.rng())
    assert edge.edge and edge.lr == pytest.approx(2.5e-4)


def test_the_optimum_interval_resamples_the_validation_items_not_only_the_seeds(tmp_path) -> None:
    from analysis.claims.rules_2025 import _fit
    from harness.items import write_items

    # three seeds with identical curves: resampling seeds alone cannot move the optimum; 60 validation items can
    gen, lrs, n_items = np.random.default_rng(0), [1e-4 * 2 ** k for k in range(-3, 4)], 60
    truth = [0.8 - 0.1 * math.log10(lr / 1.2e-4) ** 2 for lr in lrs]
    correct = {lr: gen.random(n_items) < p for lr, p in zip(lrs, truth)}
    rows = []
    for seed in range(3):
        for lr in lrs:
            row = rec("full", seed, lr, 0.5, val=float(correct[lr].mean()))
            row["source"] = str(tmp_path / row["run_id"])
            Path(row["source"]).mkdir()
            write_items(row["source"], [{"id": f"v{i}", "split": "validation", "who": "tuned", "score": float(c),
                                         "stats": [float(c), 1.0]} for i, c in enumerate(correct[lr])])
            rows.append(row)
    runs = pd.DataFrame(rows)
    seeds_only, _ = _fit(runs.drop(columns="source"), st.rng())
    with_items, _ = _fit(runs, st.rng())
    assert seeds_only.how == "seeds" and np.ptp(seeds_only.draws) == 0
    assert with_items.how.startswith("seeds and items") and with_items.log_opt == seeds_only.log_opt
    low, high = with_items.lr_interval()
    assert low < with_items.lr < high and high / low > 1.2


def test_a_collapsed_rate_is_a_point_of_the_curve_not_the_end_of_the_grid() -> None:
    from analysis.claims.rows_2025 import finished_runs, ok_runs
    from analysis.claims.rules_2025 import _fit

    rows = curve_runs("lora", 1.5e-3, n=6, centre=1e-3, r=4, alpha=32)  # rates 1.25e-4 .. 4e-3
    for row in rows:
        if row["lr"] >= 3e-3:  # the top rate collapses: one class predicted, scored at the majority's share
            row.update(status="collapsed", val_score=0.28, score=0.31)
    df = pd.DataFrame(rows)
    kept, _ = _fit(finished_runs(df), st.rng())
    dropped, _ = _fit(ok_runs(df), st.rng())
    assert dropped.edge and not kept.edge and 1e-3 <= kept.lr <= 2e-3


def ratio_records(ratio: float, *, r_shift: float = 1.0, noise=0.002, step=2.0) -> list[dict]:
    rows = curve_runs("full", 1e-4, noise=noise, step=step, seed0=1)
    for i, r in enumerate((4, 16, 64)):
        opt = 1e-4 * ratio * (r_shift if r == 64 else 1.0)
        rows += curve_runs("lora", opt, r=r, alpha=32, noise=noise, step=step, seed0=10 + i)
    return rows


@pytest.mark.parametrize("records, expected", [
    (ratio_records(10), SUPPORTED),
    (ratio_records(50), REFUTED),                        # LoRA's optimum 50x full FT's
    (ratio_records(10, r_shift=1 / 5.6), REFUTED),       # rank 64's optimum 5.6x lower (arXiv 2602.04998's shape)
    (ratio_records(10, noise=0.08), INCONCLUSIVE),       # intervals straddle the bands
    (ratio_records(10, step=3.0), NOT_RUN),              # a factor-3 grid is too coarse
])
def test_claim_16_ratio_and_rank_invariance(records, expected) -> None:
    v = verdict(16, evidence(records))
    assert v.verdict == expected, (v.verdict, v.evidence, v.missing)
    if expected != NOT_RUN:
        assert any("alpha=32: optimum r=4 / r=64" in e for e in v.evidence)
    else:
        assert "grid step" in v.missing
    # an open comparison says what would close it; a decided one has nothing to plan
    assert bool(v.plan) == (expected == INCONCLUSIVE), v.plan
    assert all("seeds would put it clear" in p or "no number of seeds" in p for p in v.plan)


def test_claim_16_reads_rate_grids_and_leaves_other_sweeps_variants_of_the_cell_unlisted() -> None:
    # another sweep's LoRA (one selected rate, five seeds) and a grid one seed short share the cell
    others = [rec("lora", s, 2e-3, 0.85, r=8, alpha=32, targets="qv") for s in range(5)]
    short = [row for row in curve_runs("lora", 1e-3, r=32, alpha=32) if row["seed"] == 0]
    v = verdict(16, evidence(ratio_records(10) + others + short))
    assert v.verdict == SUPPORTED and "r=32" in v.missing and "r=8" not in v.missing, v.missing


def test_claim_16_reports_the_alpha_2r_arm_beside_the_main_one() -> None:
    rows = ratio_records(10) + curve_runs("lora", 3e-3, r=4, alpha=8, seed0=30) + curve_runs("lora", 2e-4, r=64,
                                                                                            alpha=128, seed0=31)
    v = verdict(16, evidence(rows))
    assert v.verdict == SUPPORTED  # the second arm does not enter the verdict
    arm = [e for e in v.evidence if "alpha=2r: optimum r=4 / r=64" in e]
    assert len(arm) == 1 and float(arm[0].split("r=64 ")[1].split()[0]) == pytest.approx(15, rel=0.2)


# ---- 17 ------------------------------------------------------------------------------------------------------

def variants_records(scores: dict[str, float], noise=0.001) -> list[dict]:
    gen = np.random.default_rng(5)
    rows = [rec("full", s, lr, 0.85 + gen.normal(0, noise), val=0.85 - (lr != 5e-5) * 0.01)
            for s in range(3) for lr in (5e-5, 1e-4)]
    for m, score in scores.items():
        best = 1e-4 if m == "pissa" else 1e-3
        rows += [rec(m, s, lr, score + gen.normal(0, noise), val=score - (lr != best) * 0.01, r=16)
                 for s in range(3) for lr in (best, 2 * best)]
    return rows


SIX = ("lora", "dora", "pissa", "rslora", "loha", "lokr")


@pytest.mark.parametrize("scores, noise, expected", [
    (dict.fromkeys(SIX, 0.84), 0.001, SUPPORTED),
    (dict.fromkeys(SIX, 0.84) | {"lokr": 0.79}, 0.001, REFUTED),
    (dict.fromkeys(SIX, 0.84), 0.03, INCONCLUSIVE),
    (dict.fromkeys(SIX[:4], 0.84), 0.001, NOT_RUN),       # only the four named methods
])
def test_claim_17_spread_of_tuned_variants(scores, noise, expected) -> None:
    v = verdict(17, evidence(variants_records(scores, noise)))
    assert v.verdict == expected, (v.evidence, v.missing)
    if expected == SUPPORTED:
        pissa = next(e for e in v.evidence if e.strip().startswith("pissa"))
        assert "rate 0.0001 = 10x lower than LoRA's" in pissa and "gain retention" in pissa
        assert "over the four named" in v.estimate and any("four named" in e for e in v.evidence)
    if expected == INCONCLUSIVE:
        assert len(v.plan) == 1 and "the widest pair" in v.plan[0] and "seeds" in v.plan[0]


def test_claim_17_says_a_rate_in_words() -> None:
    from analysis.claims.rules_2025 import relative_rate

    assert relative_rate(1e-4, 1e-3) == "10x lower than LoRA's"
    assert relative_rate(8e-3, 5e-4) == "16x higher than LoRA's"
    assert relative_rate(5e-4, 5e-4) == "LoRA's" and relative_rate(math.nan, 5e-4) == "n/a"


# ---- 18 ------------------------------------------------------------------------------------------------------

def capacity_records(drop_from: dict[int, int | None]) -> list[dict]:
    """Full FT memorises everything; LoRA at rank r loses 0.2 from size drop_from[r] on."""
    gen = np.random.default_rng(7)
    rows = []
    for n in (256, 512, 1024, 2048):
        steps = n * 8 // 16
        rows += [rec("full", s, 1e-4, 0.98 + gen.normal(0, 0.005), task="memorize", rows=n, steps=steps, base=0.25)
                 for s in range(3)]
        for r, start in drop_from.items():
            acc = 0.98 - (0.2 if start is not None and n >= start else 0.0)
            rows += [rec("lora", s, 1e-3, acc + gen.normal(0, 0.005), r=r, alpha=32, task="memorize", rows=n,
                         steps=steps, base=0.25) for s in range(3)]
    return rows


@pytest.mark.parametrize("drops, expected", [
    ({1: 512, 4: 2048}, SUPPORTED),
    ({1: 2048, 4: 512}, REFUTED),
    ({1: None, 4: None}, INCONCLUSIVE),     # LoRA keeps up at every size tried: no crossing inside the grid
])
def test_claim_18_capacity_crossing_grows_with_rank(drops, expected) -> None:
    v = verdict(18, evidence(capacity_records(drops)))
    assert v.verdict == expected, (v.evidence, v.missing)
    assert any("n* by rank" in e for e in v.evidence)


def test_claim_18_is_not_run_without_memorize_records() -> None:
    assert verdict(18, evidence(variants_records(dict.fromkeys(SIX, 0.84)))).verdict == NOT_RUN


# ---- 19 ------------------------------------------------------------------------------------------------------

def placement_records(mlp: float, noise=0.002, attn_params=61440) -> list[dict]:
    gen = np.random.default_rng(3)
    rows = [rec("full", s, lr, 0.86, val=0.86 - (lr != 5e-5) * 0.01) for s in range(3) for lr in (5e-5, 1e-4)]
    for targets, r, score, params in (("attn", 20, 0.80, attn_params), ("mlp", 16, mlp, 61440),
                                      ("all-linear", 9, mlp, 62208)):
        rows += [rec("lora", s, lr, score + gen.normal(0, noise), val=score - (lr != 1e-3) * 0.01, r=r, alpha=32,
                     targets=targets, params=params) for s in range(3) for lr in (1e-3, 2e-3)]
    return rows


@pytest.mark.parametrize("mlp, noise, attn_params, expected", [
    (0.84, 0.002, 61440, SUPPORTED), (0.76, 0.002, 61440, REFUTED), (0.80, 0.03, 61440, INCONCLUSIVE),
    (0.84, 0.002, 30000, NOT_RUN)])  # counts 2x apart: no matched pair
def test_claim_19_placement_at_matched_parameters(mlp, noise, attn_params, expected) -> None:
    v = verdict(19, evidence(placement_records(mlp, noise, attn_params)))
    assert v.verdict == expected, (v.evidence, v.missing)
    assert len(v.evidence) == (0 if expected == NOT_RUN else 2)
    if expected == NOT_RUN:
        assert "apart" in v.missing


def test_the_spread_interval_is_not_fooled_by_the_upward_bias_of_a_maximum() -> None:
    """Six equal true means, each seen with noise: the observed spread is well above 0, the percentiles of the
    resampled spread exclude that truth, the simultaneous interval covers the truth (0); a real 5-point gap is
    found."""
    gen = np.random.default_rng(1)
    points = gen.normal(0, 1.0, 6)                    # each mean's standard error: 1 point
    draws = points[:, None] + gen.normal(0, 1.0, (6, 4000))
    spread = points.max() - points.min()
    naive = st.interval(draws.max(axis=0) - draws.min(axis=0))
    low, high = st.spread_interval(points, draws)
    assert naive[0] > 1.0 and low == 0.0 and high > spread   # the percentiles exclude the true spread 0
    gap = np.array([0, 0, 0, 0, 0, 5.0]) + gen.normal(0, 0.2, 6)
    low, high = st.spread_interval(gap, gap[:, None] + gen.normal(0, 0.2, (6, 4000)))
    assert 4 < low < 5 < high < 6.5


# ---- 20 ------------------------------------------------------------------------------------------------------

def batch_records(lora_large: float, batches=(16, 64), noise=0.002, short_last_batch=False) -> list[dict]:
    """`short_last_batch`: the records count the rows trained (2400 a epoch), as the harness writes them, so
    examples / steps at batch 64 is 63.2: the configured batch size must be read, not that ratio."""
    gen = np.random.default_rng(4)
    rows = []
    for b in batches:
        steps, examples = math.ceil(2400 / b), 2400 if short_last_batch else None
        rows += [rec("full", s, 1e-4, 0.85 + gen.normal(0, noise), batch=b, steps=steps, examples=examples)
                 for s in range(3)]
        for r in (4, 64):
            score = 0.85 if b == batches[0] else lora_large
            rows += [rec("lora", s, 1e-3, score + gen.normal(0, noise), r=r, alpha=32, batch=b, steps=steps,
                         examples=examples) for s in range(3)]
    return rows


@pytest.mark.parametrize("records, expected", [
    (batch_records(0.75), SUPPORTED), (batch_records(0.75, short_last_batch=True), SUPPORTED),
    (batch_records(0.95), REFUTED),
    (batch_records(0.845, noise=0.03), INCONCLUSIVE), (batch_records(0.75, batches=(16, 32)), NOT_RUN)])
def test_claim_20_gap_grows_at_a_large_batch(records, expected) -> None:
    v = verdict(20, evidence(records))
    assert v.verdict == expected, (v.evidence, v.missing)
    if expected == SUPPORTED:
        assert "batch 16 (150 steps)" in v.evidence[0] and "batch 64 (38 steps)" in v.evidence[0]
        assert "at batch 16 (150 steps) and 64 (38 steps)" in v.scope and "seeds 0,1,2" in v.scope


def test_claims_17_and_20_draw_the_study_arms_seeds_and_items_together() -> None:
    """With the study's arms (reported seeds and per-item stats) the draws come from them, not from the runs'
    per-seed scores (which also hold the selection seed), and every arm and the floor share the item draws."""
    from types import SimpleNamespace

    from analysis import bootstrap as boot
    from analysis.claims.rows_2025 import score_draws

    rows = [rec("full", s, 1e-4, 0.85) for s in (0, 1, 2, 100)] + [rec("lora", s, 1e-3, 0.80, r=4) for s in (0, 1, 2, 100)]
    ev, cell = evidence(rows), rows[0]["cell"]
    gen = np.random.default_rng(0)
    def arm(p: float) -> boot.Arm:  # 3 reported seeds x 200 items of accuracy stats [correct, 1]
        hits = (gen.random((3, 200)) < p).astype(float)
        return boot.Arm("accuracy", (0, 1, 2), hits.mean(axis=1), tuple(f"i{k:03d}" for k in range(200)),
                        np.stack([hits, np.ones_like(hits)], axis=-1))
    full, lora, floor = arm(0.9), arm(0.7), arm(0.3)
    floor = boot.Arm("accuracy", (), floor.scores[:1], floor.ids, floor.stats[:1])
    groups = {m: ev.runs[ev.runs["method"] == m] for m in ("full", "lora")}
    seeds_only = score_draws(ev, cell, groups)
    assert seeds_only.how.startswith("seeds only") and seeds_only.point["full"] == pytest.approx(0.85)
    ev.study = SimpleNamespace(arms={(cell, groups[m]["variant"].iloc[0]): a for m, a in (("full", full), ("lora", lora))},
                               floor_arms={cell: floor})
    drawn = score_draws(ev, cell, groups, floor=True)
    assert drawn.how == "seeds and items, paired"
    assert drawn.point["full"] == pytest.approx(full.scores.mean()) and drawn.point["lora"] == pytest.approx(lora.scores.mean())
    assert np.std(drawn.draws["floor"]) > 0          # the floor's items are resampled with the arms'


# ---- 21 ------------------------------------------------------------------------------------------------------

FULL_PLANE = {1e-5: (0.05, 0.70), 3e-5: (0.10, 0.80), 1e-4: (0.20, 0.85), 3e-4: (0.40, 0.86)}


def plane_records(lora: tuple[float, float] | None, noise=0.003) -> list[dict]:
    gen = np.random.default_rng(6)
    rows = [rec("full", s, lr, score + gen.normal(0, noise), forgetting=f + gen.normal(0, noise))
            for s in range(3) for lr, (f, score) in FULL_PLANE.items()]
    if lora is not None:
        f, score = lora
        rows += [rec("lora", s, lr, score + gen.normal(0, noise), val=score - (lr != 1e-3) * 0.01, r=16,
                     forgetting=f + gen.normal(0, noise)) for s in range(3) for lr in (1e-3, 2e-3)]
    return rows


@pytest.mark.parametrize("lora, expected", [
    ((0.15, 0.825), SUPPORTED),       # on the segment between full FT's 3e-5 and 1e-4 points
    ((0.30, 0.60), REFUTED),          # far below it
    ((0.01, 0.60), INCONCLUSIVE),     # forgets less than any full-FT point: the frontier is undefined there
    ((0.60, 0.86), REFUTED),          # full FT's gain, but forgets more than full FT at its selected rate (0.40):
                                      # the frontier's flat extension alone would read it as "on the frontier"
    (None, NOT_RUN)])
def test_claim_21_lora_against_full_fts_frontier(lora, expected) -> None:
    v = verdict(21, evidence(plane_records(lora)))
    assert v.verdict == expected, (v.evidence, v.missing)
    if expected != NOT_RUN:
        assert "full FT frontier over 4 (rate, budget) point(s) with >= 3 seeds" in v.evidence[-1]


def test_claim_21_judges_no_single_seed_point() -> None:
    rows = [r for r in plane_records((0.30, 0.60)) if r["method"] == "full" or r["seed"] == 0]
    v = verdict(21, evidence(rows))  # far below the frontier, but one seed has no interval (and is no fair row)
    assert v.verdict == NOT_RUN and not any("vs frontier" in e for e in v.evidence), v.evidence


def test_the_frontier_is_interpolated_and_undefined_below_its_least_forgetting_point() -> None:
    front = st.frontier(np.array([0.1, 0.2, 0.3, 0.15]), np.array([0.5, 0.9, 0.8, 0.4]))
    assert front[0].tolist() == [0.1, 0.2] and front[1].tolist() == [0.5, 0.9]  # (0.3, 0.8) and (0.15, 0.4) dominated
    assert st.frontier_gain(*front, 0.15) == pytest.approx(0.7)
    assert st.frontier_gain(*front, 0.5) == pytest.approx(0.9)
    assert math.isnan(st.frontier_gain(*front, 0.05))


def test_gain_over_floor() -> None:
    assert st.gain(0.6, 0.2, 1.0) == pytest.approx(0.5)
    assert math.isnan(float(st.gain(0.6, 0.5, 0.5)))
    runs = pd.DataFrame({"base_score": [0.3, 0.3], "floor_score": [0.25, np.nan]})
    assert st.floor_of(runs) == 0.25 and st.floor_of(runs.drop(columns="floor_score")) == 0.3


# ---- figures -------------------------------------------------------------------------------------------------

def test_the_2025_figures_render_from_hand_made_frames(tmp_path) -> None:
    from analysis.claims import plots_2025

    ev = evidence(ratio_records(10) + capacity_records({1: 512, 4: 2048}) + plane_records((0.15, 0.825)))
    lr = plots_2025.lr_curves(ev.records[ev.records["task"] == "classify"], tmp_path / "lr.png")
    cap = plots_2025.capacity_curve(ev.runs, tmp_path / "cap.png", chance=0.25)
    cell = next(c for c in ev.runs["cell"].unique() if ev.runs[ev.runs["cell"] == c]["forgetting"].notna().any())
    from analysis.claims.rules_2025_tradeoffs import plane_points
    plane = plots_2025.forgetting_plane(plane_points(ev, cell, st.rng()), tmp_path / "plane.png")
    for path in (lr, cap, plane):
        assert path is not None and path.stat().st_size > 5000 and path.read_bytes()[:4] == b"\x89PNG"
    assert plots_2025.lr_curves(ev.records.iloc[:0], tmp_path / "none.png") is None
    assert plots_2025.forgetting_plane(pd.DataFrame(), tmp_path / "none.png") is None
    assert len(plots_2025.write_figures(ev, tmp_path / "all")) >= 3


# ---- sweeps --------------------------------------------------------------------------------------------------

SWEEPS_2025 = {"lr-ratio": 18, "lr-ratio-alpha2r": 18, "lr-ratio-lm": 12, "tuned-variants": 7,
               "tuned-variants-lm": 18, "capacity": 3, "placement": 6, "batch": 6}


def expanded_variants(name: str) -> list[list[str]]:
    from hydra._internal.core_plugins.basic_sweeper import BasicSweeper
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from omegaconf import OmegaConf

    from conftest import REPO

    variants = OmegaConf.load(REPO / "sweeps" / "study" / f"{name}.yaml")["sweep"]["variants"]
    return [v for variant in variants
            for v in BasicSweeper.split_arguments(OverridesParser.create().parse_overrides(list(variant)), None)[0]]


@pytest.mark.parametrize("name, points", sorted(SWEEPS_2025.items()))
def test_each_2025_sweep_states_purpose_command_budget_and_its_grid(name, points) -> None:
    from conftest import REPO

    head = (REPO / "sweeps" / "study" / f"{name}.yaml").read_text().splitlines()[:4]
    assert head[0].startswith(f"# make sweep TASK={name} ")  # the house header: command, purpose, budget, notes
    assert [line.split(":")[0] for line in head[1:3]] == ["# Purpose", "# Budget (estimate)"]
    variants = expanded_variants(name)
    assert len(variants) == points
    rates = [o for v in variants for o in v if o.startswith("train.lr=")]
    if rates:  # explicit lists: a factor-2 grid or finer, per variant
        for variant in variants[::6]:
            lrs = sorted(float(o.split("=")[1]) for v in variants for o in v
                         if o.startswith("train.lr=") and [x for x in v if not x.startswith("train.lr=")] ==
                         [x for x in variant if not x.startswith("train.lr=")])
            assert len(lrs) >= 6 and max(b / a for a, b in zip(lrs, lrs[1:])) <= st.MAX_STEP, (name, variant, lrs)
    grids = [o.split("=", 1)[1] for v in variants for o in v if o.startswith("method.lr_grid.values=")]
    for grid in grids if name == "tuned-variants" else []:  # halving over each variant's own factor-2 grid
        lrs = sorted(float(x) for x in grid.strip("[]").split(","))
        assert len(lrs) >= 6 and max(b / a for a, b in zip(lrs, lrs[1:])) <= st.MAX_STEP, (name, lrs)
    assert name != "tuned-variants" or len(grids) == points


def test_the_placement_ranks_match_trainable_parameters_within_5_percent() -> None:
    from harness.estimate.model import estimate_overrides

    head = 384 * 3 + 3  # the classify head, trainable in every variant: peft's modules_to_save
    counts = {}
    for variant in expanded_variants("placement"):
        keep = [o for o in variant if not o.startswith("method.lr=")]
        est = estimate_overrides(["model=minilm-l6", "task=classify", "alpha=32", *keep], device="cpu")
        counts[tuple(keep)] = est.params_trainable - head
    by_budget = [list(counts.values())[:3], list(counts.values())[3:]]
    assert by_budget[0][0] == 6 * 20 * 4 * (384 + 384)  # attn r=20: 368,640
    for budget in by_budget:
        assert max(budget) / min(budget) - 1 <= 0.05, counts


def test_a_variant_with_its_own_rate_list_runs_once_per_rate(tmp_path) -> None:
    from conftest import TINY, run_cli

    (tmp_path / "sweeps").mkdir()
    (tmp_path / "sweeps" / "rates.yaml").write_text(
        "defaults:\n  - config\n  - _self_\ngroup: rates\nvariants:\n"
        "  - [method=full, \"train.lr=1e-4,2e-4\"]\n  - [method=lora, r=4, \"train.lr=1e-3,2e-3,4e-3\"]\n")
    proc = run_cli(["-m", "--config-dir", str(tmp_path / "sweeps"), "--config-name", "rates", "model=tiny-bert",
                    *TINY, f"paths.runs={tmp_path / 'runs'}"])
    assert proc.returncode == 0, proc.stderr[-3000:]
    import json
    records = [json.loads(p.read_text()) for p in (tmp_path / "runs").glob("*/result.json")]
    assert sorted((r["method"], r["lr"]) for r in records) == [
        ("full", 1e-4), ("full", 2e-4), ("lora", 1e-3), ("lora", 2e-3), ("lora", 4e-3)]


def test_the_plane_leaves_out_the_seed_that_selected_the_rate() -> None:
    """With the study's arms, each selected point (full FT's and LoRA's) is read over the reported seeds only: the
    selection seed (100), whose odd scores here would move both, is left out, as in every other verdict."""
    from types import SimpleNamespace

    from analysis.claims.rules_2025_tradeoffs import plane_points

    rows = [rec("full", s, 1e-4, 0.5 if s == 100 else 0.85, forgetting=0.9 if s == 100 else 0.3) for s in (0, 1, 2, 100)]
    rows += [rec("lora", s, 1e-3, 0.5 if s == 100 else 0.80, r=16, forgetting=0.9 if s == 100 else 0.1)
             for s in (0, 1, 2, 100)]
    ev, cell = evidence(rows), rows[0]["cell"]
    every = plane_points(ev, cell, st.rng()).set_index("method")
    assert every.loc["lora", "n_seeds"] == 4
    ev.study = SimpleNamespace(arms={(cell, v): SimpleNamespace(seeds=(0, 1, 2)) for v in ev.runs["variant"].unique()})
    reported = plane_points(ev, cell, st.rng()).set_index("method")
    assert reported.loc["lora", "n_seeds"] == 3 and reported.loc["full", "n_seeds"] == 3
    assert reported.loc["lora", "forgetting"] == pytest.approx(0.1) and reported.loc["lora", "gain"] == pytest.approx((0.80 - 0.33) / (0.85 - 0.33))


def test_claim_18_reads_the_training_rows_from_the_record_not_from_examples_over_epochs() -> None:
    from analysis.claims.rows_2025 import rows_trained

    # a run resumed at step 200 of 400 counts only the examples it trained itself: examples / epochs says 256
    runs = pd.DataFrame({"train_rows": [512.0, None], "train_examples": [3200.0, 6400.0],
                         "train_epochs": [12.5, 12.5]})
    assert rows_trained(runs).tolist() == [512.0, 512.0]  # the older record (no train_rows) falls back
