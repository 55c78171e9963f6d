"""The ledger's yardstick: floors and gain retention, the hierarchical bootstrap (coverage, pairing), choices that
never read test data, range rules, not-learned cells and the power plan, on hand-made records."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from omegaconf import OmegaConf

from analysis import bootstrap as boot
from analysis.choices import CHOICE_POINTS, best_by_validation, reporting_seeds, selection_optimism
from analysis.claims.rules import (ABOVE_RANGE, CLAIMS, INCONCLUSIVE, NOT_LEARNED, REFUTED, SUPPORTED, Evidence,
                                  ledger)
from analysis.gain import cell_floor, gain_table
from analysis.runs import load_folders
from analysis.tables import at_selected_lr, selection
from analysis.claims.verdicts import range_outcome
from harness.items import mean_stats, write_items
from harness.selection import select_lr


# ---- hand-made records ----------------------------------------------------------------------------------------

def write_run(root: Path, method: str, seed: int, lr: float, score: float, val: float, *, r=None, targets=None,
              base=0.3, base_val=0.3, copy=None, items: list[float] | None = None, base_items=None, **extra) -> Path:
    """One finished run's folder: result.json (and items.jsonl.gz when `items` holds per-item test scores)."""
    name = f"{method}{r or ''}_s{seed}_lr{lr:g}"
    folder = root / name
    folder.mkdir(parents=True)
    cfg = {"task": {"name": "classify", "n_eval": len(items) if items else 50}, "method": {"name": method},
           "r": r, "targets": targets, "seed": seed, "train": {"lr": lr, "max_steps": 10, "batch_size": 8,
                                                              "max_seq_len": 64}}
    rec = {"run_id": name, "task": "classify", "model": "m", "method": method, "r": r, "targets": targets,
           "seed": seed, "status": "ok", "lr": lr, "score": score, "val_score": val, "base_score": base,
           "base_val_score": base_val, "primary_metric": "accuracy", "data_fingerprint": "d", "config": cfg,
           "train_steps": 10, "finished_at": f"2026-01-01T00:00:{seed:02d}", **extra}
    if copy is not None:
        rec["primary_metric"] = "chrf"
        rec["metrics"], rec["val_metrics"] = {"copy_chrf": copy[1]}, {"copy_chrf": copy[0]}
    (folder / "result.json").write_text(json.dumps(rec))
    if items is not None:
        rows = [{"split": "test", "who": "tuned", "id": f"i{k}", "score": s, "pred": None, "stats": mean_stats(s)}
                for k, s in enumerate(items)]
        rows += [{"split": "test", "who": "base", "id": f"i{k}", "score": s, "pred": None, "stats": mean_stats(s)}
                 for k, s in enumerate(base_items or [])]
        write_items(folder, rows)
    return folder


def two_phase(root: Path, method: str, *, val: dict[float, float], test: dict[int, float], chosen: float,
              r=None, **kw) -> None:
    """Seed 0 at every rate of `val`, seeds 1.. at `chosen` (the two-phase protocol)."""
    for lr, v in val.items():
        write_run(root, method, 0, lr, test[0] if lr == chosen else test[0] - 0.2, v, r=r, **kw)
    for seed, score in test.items():
        if seed:
            write_run(root, method, seed, chosen, score, val[chosen], r=r, **kw)


def study(tmp_path: Path, *, full_test=None, lora_test=None, **kw) -> pd.DataFrame:
    two_phase(tmp_path, "full", val={1e-5: 0.7, 3e-5: 0.8}, test=full_test or {0: 0.92, 1: 0.90, 2: 0.89, 3: 0.91},
              chosen=3e-5, **kw)
    two_phase(tmp_path, "lora", val={1e-4: 0.75, 3e-4: 0.78}, r=16, targets="qv",
              test=lora_test or {0: 0.86, 1: 0.84, 2: 0.83, 3: 0.85}, chosen=3e-4, **kw)
    return load_folders([tmp_path])


# ---- floors and gain retention --------------------------------------------------------------------------------

def test_floor_is_the_best_candidate_on_validation_and_says_which() -> None:
    old_style = [{"task": "style", "base_score": 0.51, "base_val_score": 0.52, "primary_metric": "chrf",
                  "metrics": {"copy_chrf": 0.676}, "val_metrics": {"copy_chrf": 0.663}}]
    floor = cell_floor(old_style)
    assert (floor["floor_name"], floor["floor_score"]) == ("copy", 0.676) and "base, copy" in floor["floor_note"]
    classify = cell_floor([{"task": "classify", "base_score": 0.2, "base_val_score": 0.25, "primary_metric": "accuracy"}])
    assert classify["floor_name"] == "base" and "majority class not recorded" in classify["floor_note"]
    recorded = cell_floor([{"floor_name": "majority", "floor_score": 0.333, "floor_val_score": 0.333, **old_style[0]}])
    assert (recorded["floor_name"], recorded["floor_note"]) == ("majority", "recorded floor")
    new = cell_floor([{"floors": {"majority": {"validation": 0.34, "test": 0.33}}, "base_score": 0.2,
                       "base_val_score": 0.25}])
    assert (new["floor_name"], new["floor_score"]) == ("majority", 0.33)


def test_floor_choice_ignores_test_scores() -> None:
    rec = {"base_score": 0.9, "base_val_score": 0.40, "primary_metric": "chrf", "metrics": {"copy_chrf": 0.1},
           "val_metrics": {"copy_chrf": 0.5}}
    assert cell_floor([rec])["floor_name"] == "copy"  # copy is better on validation although far worse on test


def test_gain_retention_against_the_floor_and_reported_seeds(tmp_path) -> None:
    table, _ = gain_table(study(tmp_path, base=0.5, base_val=0.5))
    lora = table[table["method"] == "lora"].iloc[0]
    assert lora["seeds_reported"] == "1,2,3" and "selection seed 0 left out" in lora["seed_note"]
    full_mean, lora_mean = np.mean([0.90, 0.89, 0.91]), np.mean([0.84, 0.83, 0.85])
    assert lora["score_mean"] == pytest.approx(lora_mean)
    assert lora["retention_mean"] == pytest.approx(100 * lora_mean / full_mean)
    assert lora["gain_mean"] == pytest.approx(100 * (lora_mean - 0.5) / (full_mean - 0.5))
    assert lora["gain_mean"] < lora["retention_mean"] - 5  # the floor makes the shortfall visible
    assert lora["learned"] and lora["floor_name"] == "base" and "seeds only" in lora["interval"]
    assert lora["gain_low"] < lora["gain_mean"] < lora["gain_high"]


def test_a_cell_whose_full_ft_does_not_clear_the_floor_is_not_learned(tmp_path) -> None:
    df = study(tmp_path, full_test={0: 0.70, 1: 0.69, 2: 0.71, 3: 0.66}, lora_test={0: 0.68, 1: 0.68, 2: 0.67, 3: 0.69},
               copy=(0.70, 0.69))
    table, st = gain_table(df)
    assert not table["learned"].any() and (table["floor_name"] == "copy").all()
    ev = Evidence(retention=table, runs=at_selected_lr(df), study=st)
    v = next(run for n, _, run in CLAIMS if n == 2)(ev)
    assert v.verdict == NOT_LEARNED and any("NOT LEARNED" in e for e in v.evidence)
    assert v.plan and "full FT vs floor copy" in v.plan[0]  # what would show whether it learns


def test_items_give_a_paired_seeds_and_items_interval(tmp_path) -> None:
    rng = np.random.default_rng(0)
    hard = rng.random(60) < 0.3
    def hits(p): return [float(not h and rng.random() < p) for h in hard]
    for seed in range(4):
        for method, lrs, chosen, p in (("full", (1e-5, 3e-5), 3e-5, 0.95), ("lora", (1e-4, 3e-4), 3e-4, 0.9)):
            for lr in (lrs if seed == 0 else (chosen,)):
                write_run(tmp_path, method, seed, lr, 0.0, 0.8 if lr == chosen else 0.7, r=16 if method == "lora" else None,
                          items=hits(p), base_items=[0.0] * 40 + [1.0] * 20)
    for f in tmp_path.glob("*/result.json"):  # the record's score is the items' mean, as the harness writes it
        rec = json.loads(f.read_text())
        import gzip
        with gzip.open(f.parent / "items.jsonl.gz", "rt") as fh:
            rows = [json.loads(x) for x in fh]
        rec["score"] = float(np.mean([r["score"] for r in rows if r["who"] == "tuned"]))
        f.write_text(json.dumps(rec))
    table, _ = gain_table(load_folders([tmp_path]))
    lora = table[table["method"] == "lora"].iloc[0]
    assert lora["interval"] == "seeds and items, paired" and lora["n_items"] == 60
    assert lora["floor_score"] == pytest.approx(0.3)
    assert lora["gain_low"] < lora["gain_mean"] < lora["gain_high"]


# ---- the bootstrap ---------------------------------------------------------------------------------------------

def test_interval_coverage_at_five_seeds_is_near_95_percent() -> None:
    """500 synthetic studies with a known mean: the 95% interval holds it 93-97% of the time."""
    cover = boot.coverage(5, replications=500, n_boot=400)
    assert 0.93 <= cover <= 0.97, cover


def test_paired_differences_are_narrower_than_unpaired_when_items_are_correlated() -> None:
    rng = np.random.default_rng(1)
    difficulty, luck = rng.normal(0, 2.0, 150), rng.random((3, 150))  # both methods find the same items hard
    def arm(shift):
        p = 1 / (1 + np.exp(-(1.0 + shift + difficulty)))
        hits = (luck < p).astype(float)
        return boot.Arm("accuracy", (0, 1, 2), hits.mean(1), tuple(map(str, range(150))),
                        np.stack([hits, np.ones_like(hits)], -1))
    a, b = arm(0.3), arm(0.0)
    paired = boot.resample({"a": a, "b": b})
    low, high = boot.percentile(paired.draws["a"] - paired.draws["b"])
    ua, ub = boot.resample({"a": a}, seed=1), boot.resample({"b": b}, seed=2)
    ulow, uhigh = boot.percentile(ua.draws["a"] - ub.draws["b"])
    assert paired.paired and (high - low) < 0.7 * (uhigh - ulow), (high - low, uhigh - ulow)


def test_seeds_only_interval_is_the_t_interval_at_two_seeds_and_says_so() -> None:
    res = boot.resample({"m": boot.Arm("accuracy", (1, 2), np.array([0.80, 0.84]))})
    point, low, high = boot.estimate(res, lambda m: m, "m")
    assert res.how.startswith(boot.SEEDS_ONLY) and point == pytest.approx(0.82)
    from scipy import stats
    assert high - point == pytest.approx(stats.t.ppf(0.975, 1) * 0.02, rel=0.05)
    one = boot.resample({"m": boot.Arm("accuracy", (0,), np.array([0.8]))})
    assert math.isnan(boot.estimate(one, lambda m: m, "m")[1])  # one seed, no items: no interval


def test_resamples_are_reproducible() -> None:
    arms = {"m": boot.Arm("accuracy", (0, 1, 2), np.array([0.8, 0.82, 0.79]))}
    assert np.array_equal(boot.resample(arms).draws["m"], boot.resample(arms).draws["m"])


def test_count_interval_never_goes_below_zero_and_rank_correlation_is_exact() -> None:
    mean, low, high = boot.count_interval([0, 0, 4])
    assert low >= 0 and mean == pytest.approx(4 / 3) and high <= 4
    assert boot.count_interval([0, 0, 0])[1:] == (0.0, pytest.approx(-math.log(0.05) / 3))
    rho, p = boot.rank_correlation([1, 2, 3, 4, 5], [2, 4, 6, 8, 10])
    assert rho == pytest.approx(1.0) and p == pytest.approx(2 / 120)  # exact: 2 of the 5! pairings are as extreme


# ---- choices never read test scores ----------------------------------------------------------------------------

def _reverse_test(df: pd.DataFrame) -> pd.DataFrame:
    out = df.copy()
    out["score"] = out["score"].max() + out["score"].min() - out["score"]
    return out


def test_select_lr_ignores_test_scores(tmp_path) -> None:
    df = study(tmp_path)
    before, after = selection(df), selection(_reverse_test(df))
    assert before["selected_lr"].tolist() == after["selected_lr"].tolist() == [3e-5, 3e-4]
    points = [(1e-4, 0, 0.75), (3e-4, 0, 0.78)]
    assert select_lr(points)[0] == 3e-4  # the harness's own rule takes (lr, seed, validation) only


def test_widening_ignores_test_scores(tmp_path) -> None:
    from harness.sweeper import SearchVariant

    method = OmegaConf.create({"name": "lora", "has_rank": True, "lr": 2e-4,
                               "lr_grid": {"values": [6e-5, 2e-4, 6e-4, 2e-3], "rank_exponent": 0}})
    cfg = OmegaConf.create({"method": method, "r": 16, "seed": 0, "train": {"lr": None}})
    def decide(test_of):
        runs = []
        for lr, val in ((6e-5, 0.6), (2e-4, 0.7), (6e-4, 0.8)):
            folder = tmp_path / f"{test_of(lr)}_{lr:g}"
            folder.mkdir(exist_ok=True)
            (folder / "result.json").write_text(json.dumps({"status": "ok", "val_score": val, "score": test_of(lr)}))
            runs.append({"overrides": ["method=lora", f"train.lr={lr}"], "run_dir": folder,
                         "cfg": OmegaConf.create({"train": {"lr": lr}, "seed": 0})})
        variant = SearchVariant(("method=lora",), ["method=lora"], cfg, [6e-5, 2e-4, 6e-4], [])
        return variant.widen(runs, 1), variant.rates
    assert decide(lambda lr: lr * 1000) == decide(lambda lr: 1 - lr * 1000) == (True, [6e-5, 2e-4, 6e-4, 2e-3])


def test_best_variant_ignores_test_scores() -> None:
    rows = pd.DataFrame({"cell": ["c", "c", "c"], "label": ["a", "b", "d"], "val_gain": [90.0, 97.0, 95.0],
                         "gain_mean": [99.0, 80.0, 85.0], "score_mean": [0.9, 0.7, 0.8]})
    best = best_by_validation(rows, "cell")
    reversed_test = rows.assign(gain_mean=rows["gain_mean"][::-1].to_numpy(), score_mean=rows["score_mean"][::-1].to_numpy())
    assert best["label"].tolist() == best_by_validation(reversed_test, "cell")["label"].tolist() == ["b"]


def test_reporting_seeds() -> None:
    assert reporting_seeds([0, 1, 2], [0]) == ([1, 2], "selection seed 0 left out")
    assert reporting_seeds([0, 1], [0])[0] == [0, 1]  # one other seed: kept, and the row says so
    kept, note = reporting_seeds([0, 1, 2], [0, 1, 2])  # a full grid: every seed took part in the choice
    assert kept == [0, 1, 2] and "full grid" in note


def test_selection_optimism_is_the_search_seed_minus_the_others(tmp_path) -> None:
    df = study(tmp_path)
    opt = selection_optimism(at_selected_lr(df), selection(df)).set_index("label")
    assert opt.loc["full", "optimism"] == pytest.approx(0.92 - 0.90)
    assert opt.loc["lora r=16 qv", "optimism"] == pytest.approx(0.86 - 0.84)


def test_every_choice_point_is_listed_with_its_place_and_check() -> None:
    names = " ".join(c.name for c in CHOICE_POINTS)
    for needed in ("learning rate", "widening", "best variant", "merge weights", "budgets", "search rungs"):
        assert needed in names
    tests = Path(__file__).read_text()
    assert all(c.tested_by.startswith("(") or f"def {c.tested_by}(" in tests for c in CHOICE_POINTS)


# ---- range rules and the power plan ----------------------------------------------------------------------------

@pytest.mark.parametrize("interval,expected", [((82, 88), SUPPORTED), ((91, 99), ABOVE_RANGE), ((60, 78), REFUTED),
                                               ((85, 95), INCONCLUSIVE), ((75, 85), INCONCLUSIVE)])
def test_range_outcomes(interval, expected) -> None:
    assert range_outcome(*interval, 80, 90) == expected


def _gain_row(cell: str, gain: tuple[float, float, float], method="qlora", task="style") -> dict:
    return {"task": task, "model": "m", "cell": cell, "variant": f"{method}-{cell}", "label": f"{method} r=16 qv",
            "method": method, "r": 16, "targets": "qv", "lrs_tried": "1e-4,3e-4", "n_seeds": 3, "seeds_reported": "1,2",
            "gain_mean": gain[0], "gain_low": gain[1], "gain_high": gain[2], "retention_mean": gain[0],
            "val_gain": gain[0], "learned": True, "floor_name": "base", "primary_metric": "accuracy",
            "budget": "b", "test_items": 40}


@pytest.mark.parametrize("gain,expected", [((85, 82, 88), SUPPORTED), ((95, 91, 99), ABOVE_RANGE),
                                           ((70, 60, 78), REFUTED), ((86, 76, 96), INCONCLUSIVE)])
def test_claim_4_is_a_range_claim(gain, expected) -> None:
    ev = Evidence(retention=pd.DataFrame([_gain_row("a", gain)]), runs=pd.DataFrame())
    v = next(run for n, _, run in CLAIMS if n == 4)(ev)
    assert v.verdict == expected and "models m; tasks style" in v.scope and "test items 40" in v.scope


def test_power_plan_needs_more_seeds_the_closer_the_estimate_is_to_the_line() -> None:
    arms = {"m": boot.Arm("accuracy", (1, 2, 3), np.array([0.80, 0.84, 0.82]))}
    near = boot.power(arms, lambda m: m, ("m",), distance=0.01)
    far = boot.power(arms, lambda m: m, ("m",), distance=0.04)
    assert near.need_seeds > far.need_seeds > 3 and near.need_items is None
    assert "reported seeds" in near.describe() and "add" in near.describe()


def test_plan_prints_the_runs_to_add_claim_by_claim(tmp_path, capsys) -> None:
    from analysis.claims.report import main

    study(tmp_path, full_test={0: 0.92, 1: 0.90, 2: 0.80, 3: 0.91}, lora_test={0: 0.86, 1: 0.88, 2: 0.65, 3: 0.90})
    assert main(["--runs", str(tmp_path), "--no-estimates", "--plan", "--out", str(tmp_path / "out")]) == 0
    out = capsys.readouterr().out
    assert "claim 2 (inconclusive)" in out and "reported seeds" in out and "add" in out
    assert not (tmp_path / "out").exists()  # --plan writes nothing


def test_refuted_reads_at_this_scale_and_every_verdict_has_a_scope(tmp_path) -> None:
    from analysis.claims.report import markdown

    ev = Evidence(retention=pd.DataFrame([_gain_row("a", (70, 60, 78))]), runs=pd.DataFrame())
    verdicts = ledger(ev)
    assert "refuted at this scale" in markdown(verdicts)
    v4 = verdicts[3]
    assert v4.verdict == REFUTED and v4.scope


def test_rows_without_a_run_folder_take_the_floor_from_the_frame(tmp_path) -> None:
    df = study(tmp_path, base=0.5, base_val=0.5).assign(source="wandb:entity/project/run")  # as analysis.runs.load_wandb
    lora = gain_table(df)[0].query("method == 'lora'").iloc[0]
    assert (lora["floor_name"], lora["floor_score"]) == ("base", 0.5) and lora["learned"]
