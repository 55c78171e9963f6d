"""Successive halving (harness/halving.py), the budget convergence rule (harness/budget.py) and their replay on
run folders (analysis/halving_check.py): plans and costs worked out by hand, ties, hand-made curves."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from analysis import halving_check
from harness.budget import curve_points, has_flattened, score_at
from harness.halving import (Rung, plan_rungs, simulate, survivor_counts, survivors, tied_across_cut, total_cost)
from harness.selection import select_lr


def test_survivor_counts() -> None:
    assert survivor_counts(1) == []
    assert survivor_counts(5) == [2, 1]
    assert survivor_counts(7) == [3, 1]
    assert survivor_counts(8) == [4, 2, 1]
    assert survivor_counts(9, eta=3) == [3, 1]


def test_plan_and_cost_by_hand() -> None:
    # 7 rates: first rung at 2 ** -3 = 1/8 of the budget (7 -> 3), then 1/4 (3 -> 1); the winner trains on:
    # 7 * 100 + 3 * 100 + 1 * 600 steps = 1600 = 2.0 budgets of 800
    rungs = plan_rungs(7, 800)
    assert rungs == [Rung(100, 7, 3), Rung(200, 3, 1)]
    assert total_cost(rungs, 800) == pytest.approx(2.0)
    # 4 rates: rungs at 1/4 (4 -> 2) and 1/2 (2 -> 1): 4/4 + 2/4 + 1/2 = 2.0
    assert plan_rungs(4, 400) == [Rung(100, 4, 2), Rung(200, 2, 1)]
    assert plan_rungs(1, 400) == [] and total_cost([], 400, 1) == 1.0


@pytest.mark.parametrize("n, cost", [(2, 1.5), (3, 1.5), (4, 2.0), (5, 1.625), (6, 1.875), (7, 2.0), (8, 2.5)])
def test_cost_in_full_runs(n: int, cost: float) -> None:
    """At most two full-budget runs for up to seven rates (the grids have 3-7); eight cost 2.5."""
    assert total_cost(plan_rungs(n, 1600), 1600, n) == pytest.approx(cost)


def test_rungs_move_to_scored_steps() -> None:
    # 5 rates, budget 150, validation scored at 50/100/150: ideal rungs 19 and 38 move to 50 and 100
    rungs = plan_rungs(5, 150, eval_steps=[50, 100, 150])
    assert rungs == [Rung(50, 5, 2), Rung(100, 2, 1)]
    assert total_cost(rungs, 150) == pytest.approx((5 * 50 + 2 * 50 + 1 * 50) / 150)
    # 8 rates, budget 40, scored at 20 and 40: the third halving has no scored step left and happens at 40
    assert plan_rungs(8, 40, eval_steps=[20, 40]) == [Rung(20, 8, 4), Rung(40, 4, 1)]
    with pytest.raises(ValueError, match="no validation point at or after step"):
        plan_rungs(4, 400, eval_steps=[50])
    with pytest.raises(ValueError, match="n_candidates >= 1"):
        plan_rungs(0, 400)
    with pytest.raises(ValueError, match="pass the budget"):
        plan_rungs(8, 400, first_fraction=0.5)


def test_survivors_rank_like_select_lr() -> None:
    rung = Rung(100, 4, 2)
    scores = {1e-4: 0.7, 3e-4: 0.8, 1e-3: 0.8, 3e-3: math.nan}
    assert survivors(rung, scores) == [3e-4, 1e-3]
    assert survivors(Rung(100, 4, 1), scores) == [3e-4]  # tie to the smaller rate, as select_lr
    assert select_lr([(lr, 0, s) for lr, s in scores.items()])[0] == 3e-4
    assert tied_across_cut(Rung(100, 4, 1), scores) == [3e-4, 1e-3]
    assert tied_across_cut(rung, scores) == []


def test_simulate_picks_the_leader_and_reports_ceiling_ties() -> None:
    curves = {1e-4: {25: 0.2, 50: 0.3}, 3e-4: {25: 0.5, 50: 0.8}, 1e-3: {25: 0.6, 50: 1.0}, 3e-3: {25: 0.1, 50: 0.1}}
    result = simulate(curves, 100, final_scores={1e-4: 0.4, 3e-4: 0.9, 1e-3: 1.0, 3e-3: 0.1})
    assert [o.rung for o in result.rungs] == [Rung(25, 4, 2), Rung(50, 2, 1)]
    assert result.rungs[0].kept == [1e-3, 3e-4] and result.chosen == 1e-3 and result.tied == [1e-3]
    assert result.cost == pytest.approx(2.0)
    # two rates at the ceiling when the last comparison is made: the smaller wins, both are reported
    ceiling = {1e-4: {25: 0.2, 50: 0.3}, 3e-4: {25: 0.9, 50: 1.0}, 1e-3: {25: 1.0, 50: 1.0}, 3e-3: {25: 0.1, 50: 0.2}}
    tied = simulate(ceiling, 100)
    assert tied.chosen == 3e-4 and tied.tied == [3e-4, 1e-3]


def test_simulate_uses_final_scores_at_the_budget() -> None:
    # curves scored only at half and full budget (as the fair style sweep): the last rung is the budget's step,
    # where the whole-split validation score decides, not the curve's subset point
    curves = {1e-4: {20: 0.6, 40: 0.9}, 1e-3: {20: 0.7, 40: 0.5}, 1e-2: {20: 0.1, 40: 0.1}, 1e-5: {20: 0.2, 40: 0.2}}
    result = simulate(curves, 40, final_scores={1e-4: 0.61, 1e-3: 0.66, 1e-2: 0.1, 1e-5: 0.2})
    assert result.rungs[-1].rung.step == 40 and result.chosen == 1e-3
    assert result.cost == pytest.approx(3.0)  # 4 x 20 + 2 x 20 steps of a 40-step budget


def test_a_near_tie_at_the_last_rung_runs_to_the_budget() -> None:
    # the last rung keeps one rate; with a margin every rate within it of the leader is kept too (rank order)
    last = Rung(50, 3, 1)
    scores = {5e-4: 0.483, 1e-3: 0.477, 2e-3: 0.437}
    assert survivors(last, scores) == [5e-4]
    assert survivors(last, scores, final_margin=0.04) == [5e-4, 1e-3]
    assert survivors(last, scores, final_margin=0.046) == [5e-4, 1e-3, 2e-3]  # 0.483 - 0.437 = 0.046, inclusive
    # an earlier rung keeps its count whatever the margin: only the final decision waits for the end
    assert survivors(Rung(25, 6, 3), {1: 0.5, 2: 0.49, 3: 0.48, 4: 0.47}, final_margin=0.1) == [1, 2, 3]
    assert survivors(last, {1e-3: math.nan, 2e-3: math.nan}, final_margin=1.0) == [1e-3]


def test_simulate_with_a_margin_selects_on_the_end_score() -> None:
    # 1e-3 leads at step 50 by 0.01, but 3e-4 ends higher: plain halving picks 1e-3, the margin 3e-4
    curves = {1e-4: {25: 0.2, 50: 0.3}, 3e-4: {25: 0.5, 50: 0.79}, 1e-3: {25: 0.6, 50: 0.80}, 3e-3: {25: 0.1, 50: 0.1}}
    finals = {1e-4: 0.4, 3e-4: 0.92, 1e-3: 0.88, 3e-3: 0.1}
    assert simulate(curves, 100, final_scores=finals).chosen == 1e-3
    result = simulate(curves, 100, final_scores=finals, final_margin=0.02)
    assert result.rungs[-1].kept == [1e-3, 3e-4] and result.chosen == 3e-4 and result.tied == [3e-4]
    assert result.cost == pytest.approx(2.0 + 0.5)  # the second finalist's last 50 of 100 steps
    # a margin smaller than the gap changes nothing
    assert simulate(curves, 100, final_scores=finals, final_margin=0.005).chosen == 1e-3


def test_flattening_on_hand_made_curves() -> None:
    rising = [(s, s / 100) for s in range(0, 101, 10)]  # +0.2 over the last 20 steps
    assert has_flattened(rising, 0.1).flattened is False
    assert has_flattened(rising, 0.1).gain == pytest.approx(0.2)
    assert has_flattened(rising, 0.25).flattened is True
    plateau = [(10, 0.5), (50, 0.8), (90, 0.81), (100, 0.81)]
    verdict = has_flattened(plateau, 0.02)
    assert verdict.flattened is True and verdict.tail_start == 80
    assert verdict.gain == pytest.approx(0.81 - (0.8 + 0.01 * 30 / 40))
    # sparse points: the score at 80% (step 32) is interpolated between 20 and 40
    sparse = [{"step": 20, "val_score": 0.6, "epoch": 0.5}, {"step": 40, "val_score": 0.7, "epoch": 1.0}]
    assert score_at(curve_points(sparse), 32) == pytest.approx(0.66)
    assert has_flattened(sparse, 0.05).flattened is True and has_flattened(sparse, 0.03).flattened is False
    falling = [(50, 0.9), (100, 0.7)]
    assert has_flattened(falling, 0.0).flattened is True


def test_flattening_cannot_tell() -> None:
    assert has_flattened([], 0.1).flattened is None
    assert "one curve point" in has_flattened([(100, 0.5)], 0.1).reason
    assert "before the budget" in has_flattened([(50, 0.5), (100, 0.6)], 0.1, budget_steps=200).reason
    assert "where the tail starts" in has_flattened([(90, 0.5), (100, 0.6)], 0.1).reason
    assert has_flattened([(50, 0.5), (100, float("nan"))], 0.1).flattened is None
    with pytest.raises(ValueError, match="half_width"):
        has_flattened([(50, 0.5), (100, 0.6)], -0.1)


def _record(folder: Path, lr: float, seed: int, protocol: str, curve: list[tuple[int, float]], final: float) -> None:
    run_id = f"classify_m_lora_r16_qv_s{seed}_{lr:g}"
    (folder / run_id).mkdir(parents=True)
    record = {"run_id": run_id, "task": "classify", "model": "m", "method": "lora", "r": 16, "targets": "qv",
              "seed": seed, "lr": lr, "lr_protocol": protocol, "status": "ok", "score": final, "val_score": final,
              "train_steps": 40, "max_steps": 40, "data_fingerprint": "d", "finished_at": f"2026-12-01T10:0{seed}",
              "val_curve": [{"step": s, "val_score": v} for s, v in curve]}
    (folder / run_id / "result.json").write_text(json.dumps(record))


def test_check_replays_run_folders(tmp_path: Path) -> None:
    runs = tmp_path / "fair-classify" / "runs"
    for lr, mid, final in [(1e-4, 0.5, 0.55), (3e-4, 0.7, 0.8), (1e-3, 0.6, 0.7), (3e-3, 0.2, 0.2)]:
        _record(runs, lr, 0, "two-phase-search", [(20, mid), (40, final)], final)
    for seed, final in [(1, 0.78), (2, 0.82)]:
        _record(runs, 3e-4, seed, "two-phase-seeds", [(20, 0.7), (40, final)], final)
    out = tmp_path / "check.md"
    assert halving_check.main([str(tmp_path), "--out", str(out)]) == 0
    text = out.read_text()
    assert "| classify | lora r=16 qv | 4 | 0.0003 | 0.0003 | yes | +0.000 | 3.00 | 2.00 |" in text
    assert "Agreement: 1 of 1 replayed variants" in text
    assert "| classify | lora r=16 qv | 0.0003 | 40 | 20:0.700 40:0.800 | +0.040 |" in text  # 0.8 - 0.76


def test_check_rejects_a_folder_without_sweeps(tmp_path: Path, capsys) -> None:
    assert halving_check.main([str(tmp_path)]) == 2
    assert "no folder matches" in capsys.readouterr().err
