"""Fair comparisons: budgets in epochs, the validation curve and its time, learning-rate grids and selection on
validation, Fieller intervals only with two or more seeds, grid-edge and budget flags, collapse detection, the
base-score cache, and a two-phase lr_search sweep that runs each effective run once and resumes."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from omegaconf import OmegaConf
from scipy import stats

from analysis import runs as runs_mod, tables
from conftest import TINY, compose, run_cli, run_inprocess
from harness.config import validate, with_single_budget
from harness.errors import ConfigError
from harness.selection import at_grid_edge, lr_candidates, select_lr
from harness.training_budget import collapse_reason, planned_steps


# ---- budget ----

def test_epochs_become_steps_the_way_trainer_counts_them() -> None:
    def train(**kw):
        return OmegaConf.create({"max_steps": None, "epochs": 2, "batch_size": 16, "grad_accum": 1} | kw)

    assert planned_steps(train(), 3200) == 400
    assert planned_steps(train(epochs=0.5), 3200) == 100
    assert planned_steps(train(epochs=1, batch_size=7), 100) == 15      # ceil(100 / 7) batches
    assert planned_steps(train(epochs=1, grad_accum=4), 3200) == 50
    assert planned_steps(train(epochs=None, max_steps=33), 3200) == 33


def test_exactly_one_budget_is_set() -> None:
    assert with_single_budget(["train.epochs=2"]) == ["train.epochs=2", "train.max_steps=null"]
    assert with_single_budget(["train.max_steps=5"]) == ["train.max_steps=5", "train.epochs=null"]
    assert with_single_budget(["train.max_steps=5", "train.epochs=2"]) == ["train.max_steps=5", "train.epochs=2"]
    # a trailing option (`--cfg job`) keeps its value: the null goes beside the budget it follows from
    assert with_single_budget(["train.epochs=2", "--cfg", "job"]) == ["train.epochs=2", "train.max_steps=null", "--cfg", "job"]
    with pytest.raises(ConfigError, match="exactly one of train.max_steps and train.epochs .both set"):
        validate(compose(["train.epochs=2"]))
    with pytest.raises(ConfigError, match="neither set"):
        validate(compose(["train.max_steps=null"]))
    with pytest.raises(ConfigError, match="train.epochs must be a positive number"):
        validate(compose(["train.epochs=0", "train.max_steps=null"]))
    assert validate(compose(["train.epochs=1.5", "train.max_steps=null"])).train.epochs == 1.5


def test_budget_conflict_is_one_line_on_the_command_line() -> None:
    proc = run_cli(["train.epochs=1", "train.max_steps=3", "tracking=none"])
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == [
        "error: set exactly one of train.max_steps and train.epochs (both set); e.g. train.epochs=2 train.max_steps=null"]


def test_epoch_budget_run_records_its_budget_and_validation_curve(runs: Path) -> None:
    overrides = ["model=tiny-llama", *[o for o in TINY if not o.startswith("train.max_steps")], "train.max_steps=null",
                 "train.epochs=2", "train.eval_every=2", "train.eval_subset=4"]
    result, _ = run_inprocess(overrides, runs)
    assert result["train_steps"] == result["train_steps_done"] == 8          # 2 x ceil(16 / 4)
    assert result["train_epochs"] == 2.0 and result["train_examples"] == 32 and result["budget_unit"] == "epochs"
    assert result["train_tokens"] > 0
    curve = result["val_curve"]
    assert [p["step"] for p in curve] == [2, 4, 6, 8]
    assert all(set(p) == {"step", "epoch", "tokens", "val_score", "train_loss"} for p in curve)
    assert curve[-1]["tokens"] == result["train_tokens"] and curve[0]["epoch"] == pytest.approx(0.5)
    # evaluation time is measured and taken out of the training time tokens/s divides by
    assert result["eval_s"] > 0 and result["eval_subset"] == 4
    assert result["train_runtime_s"] == pytest.approx(result["train_loop_s"] - result["eval_s"], abs=2e-3)
    assert result["train_tokens_per_s"] == pytest.approx(result["train_tokens"] / result["train_runtime_s"])
    assert "val_score" in result and "val_metrics" in result and "base_val_score" in result


# ---- base scores computed once ----

def test_base_scores_are_cached_per_cell_and_missed_on_any_change(runs: Path, tmp_path: Path) -> None:
    base = ["model=tiny-llama", *TINY, f"paths.base_scores={tmp_path / 'base'}"]
    first, _ = run_inprocess([*base, "train.lr=1e-3"], runs)
    second, _ = run_inprocess([*base, "train.lr=3e-3"], runs)           # same cell, another rate: a hit
    other_data, _ = run_inprocess([*base, "task.n_eval=6"], runs)        # evaluation set changed: a miss
    from harness.config import native_bf16

    other = "fp32" if native_bf16() else "bf16"  # not the precision auto runs in on this machine (RunSpec.precision)
    other_precision, _ = run_inprocess([*base, f"train.precision={other}"], runs)  # other weights: a miss
    assert (first["base_cached"], second["base_cached"]) == (False, True)
    assert other_data["base_cached"] is False and other_precision["base_cached"] is False
    assert second["base_score"] == first["base_score"] and second["forgetting_before"] == first["forgetting_before"]
    assert len(list((tmp_path / "base").glob("*.json"))) == 3


def test_the_base_key_changes_with_weights_data_and_evaluation_settings_only() -> None:
    from harness.base_scores import base_key

    eff = validate(compose(["model=tiny-llama", *TINY])).effective
    key = base_key(eff, "weights-a", "data-a", {"torch": "2.13.0"})
    changed = lambda **train: eff | {"train": eff["train"] | train}  # noqa: E731
    assert base_key(changed(lr=1e-2), "weights-a", "data-a", {"torch": "2.13.0"}) == key  # training-only knob
    assert base_key(eff | {"seed": 7}, "weights-a", "data-a", {"torch": "2.13.0"}) == key  # causal LM: seed-free
    misses = [base_key(eff, "weights-b", "data-a", {"torch": "2.13.0"}),      # other weights, same config
              base_key(eff, "weights-a", "data-b", {"torch": "2.13.0"}),      # other data
              base_key(changed(eval_batch_size=7), "weights-a", "data-a", {"torch": "2.13.0"}),
              base_key(changed(max_seq_len=64), "weights-a", "data-a", {"torch": "2.13.0"}),
              base_key(eff, "weights-a", "data-a", {"torch": "2.14.0"})]     # other library version
    assert len({key, *misses}) == 1 + len(misses)


def test_the_scoring_code_key_names_the_code_this_process_imported(tmp_path: Path, monkeypatch) -> None:
    from harness import base_scores

    (tmp_path / "forgetting.py").write_text("# an edit made while a sweep runs\n")
    assert base_scores.scoring_code_hash(tmp_path) != base_scores.SCORING_CODE
    eff = {"train": {"precision": "bf16"}, "model": {"kind": "causal_lm"}, "method": {}, "task": {}, "seed": 0}
    before = base_scores.base_key(eff, "m", "d", {})
    monkeypatch.setattr(base_scores, "HARNESS_DIR", tmp_path)  # the files change on disk after import
    assert base_scores.base_key(eff, "m", "d", {}) == before


# ---- learning-rate grids and selection ----

def test_lr_candidates_are_centred_on_the_default_and_follow_rank_scaling() -> None:
    lora = compose(["method=lora"]).method
    assert lr_candidates(lora, 16, 3, 2e-4) == [6e-5, 2e-4, 6e-4]
    assert lr_candidates(lora, 64, 3, 2e-4) == [6e-5, 2e-4, 6e-4]            # alpha = 2r: rank-free
    assert lr_candidates(lora, 16, 5, 2e-4) == [2e-5, 6e-5, 2e-4, 6e-4, 2e-3]
    assert lr_candidates(lora, 16, 3, 6e-3) == [6e-4, 2e-3, 6e-3]             # clipped at the grid's end
    rslora = compose(["method=rslora"]).method
    assert lr_candidates(rslora, 16, 3, 2e-4) == [1.5e-5, 5e-5, 1.5e-4]      # LoRA's rates / sqrt(16)
    full = compose(["method=full"]).method
    assert lr_candidates(full, None, 3, 5e-5) == [1.5e-5, 5e-5, 1.5e-4]
    for name in ("full", "lora", "rslora", "dora", "qlora", "adalora", "ia3", "prefix", "prompt", "pissa", "loha",
                 "lokr", "vera"):
        method = compose([f"method={name}"]).method
        values = sorted(method.lr_grid["values"])
        ratios = np.diff(np.log(values))
        assert np.allclose(ratios, ratios[0], rtol=0.1), f"{name}: grid not log-spaced"
        assert values[0] < method.lr < values[-1], f"{name}: default rate not inside its grid"


def test_selection_follows_validation_compares_common_seeds_and_breaks_ties_low() -> None:
    # (lr, seed, val): 1e-3 is best on seed 0, the seed every rate has; its extra seeds must not count against it
    points = [(1e-4, 0, 0.70), (1e-3, 0, 0.80), (1e-2, 0, 0.75), (1e-3, 1, 0.60), (1e-3, 2, 0.62)]
    chosen, means, seeds = select_lr(points)
    assert chosen == 1e-3 and seeds == [0] and means[1e-3] == pytest.approx(0.80)
    assert select_lr([(1e-3, 0, 0.8), (1e-4, 0, 0.8)])[0] == 1e-4
    assert select_lr([(1e-3, 0, 0.8), (1e-4, 0, 0.7), (1e-3, 1, 0.7), (1e-4, 1, 0.9)])[0] == 1e-4  # means 0.75 < 0.8
    assert select_lr([])[0] is None
    assert at_grid_edge(1e-2, [1e-4, 1e-3, 1e-2]) and not at_grid_edge(1e-3, [1e-4, 1e-3, 1e-2])
    assert not at_grid_edge(1e-3, [1e-3])


def rec(method: str, seed: int, lr: float, val: float, test: float, *, r: int | None = None, status: str = "ok",
        steps: int = 10, cell: str = "d1") -> dict:
    cfg = {"task": {"name": "classify", "n_eval": 100}, "model": {"name": "m"}, "method": {"name": method}, "r": r,
           "targets": {"name": "qv"} if r else None, "seed": seed,
           "train": {"max_steps": steps, "batch_size": 8, "grad_accum": 1, "max_seq_len": 128, "lr": lr}}
    return {"run_id": f"{method}_r{r}_s{seed}_{lr:g}_{steps}", "status": status, "task": "classify", "model": "m",
            "method": method, "r": r, "targets": "qv" if r else None, "seed": seed, "primary_metric": "accuracy",
            "score": test, "val_score": val, "base_score": 0.3, "data_fingerprint": cell, "config": cfg, "lr": lr,
            "train_steps": steps, "peak_mem_bytes": 1e9, "train_runtime_s": 10.0, "finished_at": "2026"}


def frame(records: list[dict], tmp_path: Path) -> pd.DataFrame:
    for r in records:
        folder = tmp_path / r["run_id"]
        folder.mkdir(parents=True)
        (folder / "result.json").write_text(json.dumps(r))
    return runs_mod.load_folders([tmp_path])


def two_phase(method: str, rates: dict[float, tuple[float, float]], seeds: list[tuple[float, float]], **kw) -> list[dict]:
    """Seed 0 at every rate (val, test); seeds 1.. at the rate with the best validation score."""
    out = [rec(method, 0, lr, val, test, **kw) for lr, (val, test) in rates.items()]
    best = max(rates, key=lambda lr: rates[lr][0])
    return out + [rec(method, i + 1, best, val, test, **kw) for i, (val, test) in enumerate(seeds)]


@pytest.mark.parametrize("score, learned", [(0.80, True), (0.34, False)])
def test_a_cell_without_full_ft_is_learned_when_the_arm_clears_its_floor(tmp_path: Path, score, learned) -> None:
    """Two LoRA arms and no full FT (claim 19's placement cell): no retention, but the arm's own interval against
    the floor (0.33) says whether the cell learned, so a comparison between the arms can decide."""
    from analysis.gain import gain_table

    records = [rec("lora", s, lr, 0.7 + 0.01 * (lr == 1e-3), score + 0.01 * s, r=r) | {"floor_name": "majority",
               "floor_score": 0.33, "floor_val_score": 0.33} for r in (8, 16) for s in range(3) for lr in (1e-3, 2e-3)]
    table, _ = gain_table(frame(records, tmp_path))
    assert len(table) == 2 and table["learned"].tolist() == [learned] * 2
    assert table["gain_mean"].isna().all() and all("no full-FT run" in n for n in table["note"])


def test_selection_uses_validation_when_test_disagrees_and_intervals_need_two_seeds(tmp_path: Path) -> None:
    records = [
        # full FT: validation prefers 5e-5; the test split would have preferred 1.5e-4 (0.95)
        *two_phase("full", {1.5e-5: (0.70, 0.70), 5e-5: (0.82, 0.80), 1.5e-4: (0.78, 0.95)}, [(0.80, 0.82), (0.81, 0.78)]),
        # LoRA: best validation at the grid's top rate -> grid edge
        *two_phase("lora", {6e-5: (0.60, 0.62), 2e-4: (0.70, 0.70), 6e-4: (0.79, 0.76)}, [(0.78, 0.78), (0.77, 0.80)], r=16),
        # DoRA: one seed only -> a mean without an interval; its top rate collapsed
        rec("dora", 0, 2e-4, 0.75, 0.72, r=16), rec("dora", 0, 6e-5, 0.70, 0.74, r=16),
        rec("dora", 0, 6e-4, 0.33, 0.33, r=16, status="collapsed"),
    ]
    ret = tables.retention(frame(records, tmp_path))
    full = ret[ret["method"] == "full"].iloc[0]
    assert full["selected_lr"] == 5e-5 and full["n_seeds"] == 3 and full["lrs_tried"] == "1.5e-05,5e-05,0.00015"
    assert full["score_mean"] == pytest.approx(0.80) and full["retention_mean"] == 100 and not full["grid_edge"]
    t = stats.t.ppf(0.975, 2)
    assert (full["score_low"], full["score_high"]) == pytest.approx((0.80 - t * 0.02 / math.sqrt(3), 0.80 + t * 0.02 / math.sqrt(3)))
    lora = ret[ret["method"] == "lora"].iloc[0]
    assert lora["selected_lr"] == 6e-4 and lora["grid_edge"] and "grid edge: widen the grid" in lora["note"]
    a, b = np.array([0.76, 0.78, 0.80]), np.array([0.80, 0.82, 0.78])
    ratio, low, high = tables.fieller_interval(a, b)
    assert lora["retention_mean"] == pytest.approx(100 * a.mean() / b.mean())
    assert (lora["retention_low"], lora["retention_high"]) == pytest.approx((100 * low, 100 * high))
    # Fieller by hand: roots of (a - q b)^2 = t^2 (va + q^2 vb)
    va, vb = a.var(ddof=1) / 3, b.var(ddof=1) / 3
    roots = np.roots([b.mean() ** 2 - t * t * vb, -2 * a.mean() * b.mean(), a.mean() ** 2 - t * t * va])
    assert sorted(roots) == pytest.approx([low, high])
    dora = ret[ret["method"] == "dora"].iloc[0]
    assert dora["selected_lr"] == 2e-4 and dora["n_seeds"] == 1 and dora["collapsed_lrs"] == "0.0006"
    assert math.isnan(dora["score_low"]) and math.isnan(dora["retention_low"]) and "no interval" in dora["note"]
    assert tables.format_retention(dora) == f"{100 * 0.72 / 0.80:.1f}% (n=1, no CI)"
    assert set(tables.RETENTION_COLUMNS) >= {"task", "model", "variant", "method", "r", "targets", "selected_lr",
                                             "lrs_tried", "n_seeds", "val_score", "score_mean", "score_low",
                                             "score_high", "retention_mean", "retention_low", "retention_high",
                                             "grid_edge"}


def test_a_variant_with_another_budget_is_flagged_not_silently_compared(tmp_path: Path) -> None:
    records = [rec("full", s, 5e-5, 0.8, 0.8 + 0.01 * s, steps=20) for s in range(2)] + \
              [rec("lora", s, 2e-4, 0.7, 0.7 + 0.01 * s, r=16, steps=10) for s in range(2)]
    lora = tables.retention(frame(records, tmp_path)).query("method == 'lora'").iloc[0]
    assert lora["budget_mismatch"] and "budget differs from full FT's" in lora["note"]


def test_fieller_interval_edge_cases() -> None:
    assert math.isnan(tables.fieller_interval([0.8], [0.8, 0.9])[1])
    # no spread in the denominator: the interval is the numerator's t-interval divided by the constant
    half = stats.t.ppf(0.975, 1) * 0.05 / 0.5
    assert tables.fieller_interval([0.8, 0.9], [0.5, 0.5]) == pytest.approx((1.7, 1.7 - half, 1.7 + half))
    noisy = tables.fieller_interval([0.5, 0.6], [0.01, 0.9])
    assert noisy[1] == -math.inf and noisy[2] == math.inf


# ---- collapse ----

def test_collapse_is_a_rising_loss_or_one_class_predictions() -> None:
    rising = [(10, 1.1), (20, 0.9), (30, 1.0), (40, 1.6), (50, 2.0), (60, 2.2)]
    assert collapse_reason(rising).startswith("training loss ended at 2.1000, above its start 1.0000")
    assert collapse_reason([(i, 1.10 + 0.01 * (i % 3)) for i in range(12)]) is None    # flat: not collapsed
    assert collapse_reason(rising[:5]) is None                                        # too few points to call
    refs = ["negative", "neutral", "positive"] * 20
    assert "onto one class ('neutral' for 100%" in collapse_reason([], ["neutral"] * 60, refs)
    assert collapse_reason([], ["neutral"] * 58 + ["positive"] * 2, refs) is not None
    assert collapse_reason([], ["neutral"] * 40 + ["positive"] * 20, refs) is None     # weak, not collapsed
    assert collapse_reason([], [""] * 60, refs) is None                                # never answers: a miss
    assert collapse_reason([], ["neutral"] * 8, refs[:8]) is None                      # too few rows to call


# ---- the sweep ----

def test_lr_search_sweep_runs_two_phases_once_and_resumes(tmp_path: Path) -> None:
    args = ["-m", "model=tiny-llama", *TINY, "method=full,lora", "sweep.lr_search=2", "sweep.seeds=2",
            f"paths.runs={tmp_path}"]
    proc = run_cli(args)
    assert proc.returncode == 0, proc.stderr[-3000:]
    records = [json.loads(p.read_text()) for p in tmp_path.glob("*/result.json")]
    assert len(records) == 2 * (2 + 1)                       # per variant: 2 rates on seed 0, seed 1 at the best
    by = {(r["method"], r["seed"], r["lr"]) for r in records}
    assert {(m, 0) for m in ("full", "lora")} == {(m, s) for m, s, _ in by if s == 0}
    assert sorted(lr for m, s, lr in by if m == "full" and s == 0) == [5e-5, 1.5e-4]
    assert sorted(lr for m, s, lr in by if m == "lora" and s == 0) == [2e-4, 6e-4]
    for method in ("full", "lora"):
        search = [r for r in records if r["method"] == method and r["seed"] == 0 and r["status"] == "ok"]
        chosen = select_lr([(r["lr"], 0, r["val_score"]) for r in search])[0]
        (second,) = [r for r in records if r["method"] == method and r["seed"] == 1]
        assert second["lr"] == chosen and second["lr_protocol"] == "two-phase-seeds"
        assert {r["lr_protocol"] for r in search} == {"two-phase-search"}
    again = run_cli(args)
    assert again.returncode == 0
    out = again.stdout + again.stderr
    assert "4 distinct runs (0 equivalent merged), 4 already ok, 0 to run" in out
    assert "2 distinct runs (0 equivalent merged), 2 already ok, 0 to run" in out


def test_report_draws_sensitivity_and_lists_collapsed_runs(tmp_path: Path) -> None:
    from analysis import report

    records = [*two_phase("full", {1.5e-5: (0.70, 0.70), 5e-5: (0.82, 0.80)}, [(0.80, 0.82)]),
               *two_phase("lora", {2e-4: (0.70, 0.70), 6e-4: (0.79, 0.76)}, [(0.78, 0.78)], r=16),
               rec("lora", 0, 2e-3, 0.33, 0.33, r=16, status="collapsed")]
    for r in records:
        r["val_curve"] = [{"step": 5, "epoch": 0.5, "tokens": 100, "val_score": 0.5, "train_loss": 1.0},
                          {"step": 10, "epoch": 1.0, "tokens": 200, "val_score": r["val_score"], "train_loss": 0.8}]
    df = frame(records, tmp_path / "runs")
    written = report.build(df, tmp_path / "rep")
    assert {"lr_sensitivity", "validation_curves"} <= set(written)
    table = pd.read_csv(tmp_path / "rep" / "tables" / "retention.csv")
    lora = table[table["method"] == "lora"].iloc[0]
    # 2e-3 collapsed: not selected, and it bounds the search, so the best usable 6e-4 is not at the grid's edge
    assert lora["selected_lr"] == 6e-4 and not bool(lora["grid_edge"]) and float(lora["collapsed_lrs"]) == 0.002
    assert lora["lrs_tried"] == "0.0002,0.0006,0.002"
    full = table[table["method"] == "full"].iloc[0]
    assert full["selected_lr"] == 5e-5 and bool(full["grid_edge"])
    failures = pd.read_csv(tmp_path / "rep" / "tables" / "failures.csv")
    assert failures["status"].tolist() == ["collapsed"]
    assert "grid edge" in (tmp_path / "rep" / "report.md").read_text()


def test_explicit_lr_axis_wins_and_variants_cross_the_axes(tmp_path: Path) -> None:
    """Also: a sweep file and a command line from before the settings moved under `sweep:` (top-level
    `variants:`, `lr_search=3`) still work, each with a note naming the new key."""
    sweep = tmp_path / "conf"
    sweep.mkdir()
    (sweep / "pairs.yaml").write_text("defaults:\n  - config\n  - _self_\n\nvariants:\n  - [method=full]\n"
                                      "  - [method=lora, r=4]\n")
    args = ["-m", "--config-dir", str(sweep), "--config-name", "pairs", "model=tiny-llama", *TINY, "lr_search=3",
            "train.lr=1e-3,2e-3", f"paths.runs={tmp_path / 'runs'}"]
    proc = run_cli(args)
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = proc.stderr + proc.stdout
    assert "explicit train.lr axis is given, so sweep.lr_search=3 is not applied" in out
    assert "`lr_search=` is now `sweep.lr_search=`" in out
    assert "top-level `variants` is now `sweep.variants`" in out
    records = [json.loads(p.read_text()) for p in (tmp_path / "runs").glob("*/result.json")]
    assert sorted((r["method"], r["r"], r["lr"]) for r in records) == [
        ("full", None, 1e-3), ("full", None, 2e-3), ("lora", 4, 1e-3), ("lora", 4, 2e-3)]


def test_widening_adds_the_next_grid_rate_beyond_an_edge_until_bracketed(tmp_path: Path) -> None:
    from harness.sweeper import SearchVariant

    cfg = compose(["method=lora", "r=16", "seed=0"])
    variant = SearchVariant(("method=lora", "r=16"), ["method=lora", "r=16", "seed=0"], cfg, [6e-5, 2e-4, 6e-4], [])

    def rows(results: dict[float, tuple[str, float]]) -> list[dict]:
        out = []
        for lr, (status, val) in results.items():
            folder = tmp_path / f"lr{lr:g}"
            folder.mkdir(exist_ok=True)
            (folder / "result.json").write_text(json.dumps({"status": status, "val_score": val}))
            out.append({"overrides": [*variant.first, f"train.lr={lr}", "lr_protocol=two-phase-search"],
                        "run_dir": folder, "cfg": compose(["method=lora", "r=16", "seed=0", f"train.lr={lr}"])})
        return out

    assert variant.widen(rows({6e-5: ("ok", 0.5), 2e-4: ("ok", 0.6), 6e-4: ("ok", 0.7)}), limit=2)
    assert variant.rates == [6e-5, 2e-4, 6e-4, 2e-3]
    # the new top rate collapsed: the best usable rate is now bracketed, nothing more is added
    assert not variant.widen(rows({6e-5: ("ok", 0.5), 2e-4: ("ok", 0.6), 6e-4: ("ok", 0.7),
                                   2e-3: ("collapsed", 0.33)}), limit=2)
    low = SearchVariant(variant.key, variant.first, cfg, [6e-5, 2e-4, 6e-4], [])
    assert low.widen(rows({6e-5: ("ok", 0.8), 2e-4: ("ok", 0.6), 6e-4: ("ok", 0.5)}), limit=1)
    assert low.rates[-1] == 2e-5
    assert not low.widen(rows({2e-5: ("ok", 0.9), 6e-5: ("ok", 0.8), 2e-4: ("ok", 0.6), 6e-4: ("ok", 0.5)}), limit=1)


# ---- a held-out selection seed (selection_seed) ----

def test_held_out_selection_seed_plans_search_apart_from_every_reporting_seed(tmp_path: Path) -> None:
    from harness.sweep_plan import SELECTION_SEED_REPORT, SELECTION_SEED_SEARCH, search_variants, \
        seeds_at_selected_rates

    grid = [[*v, f"seed={s}"] for s in range(5) for v in (["method=full"], ["method=lora", "r=16"])]
    variants = search_variants(grid, 2, compose, selection_seed=100)
    assert [len(v.waiting) for v in variants] == [5, 5]  # every reporting seed waits for the selected rate
    search = [o for v in variants for o in v.search_overrides()]
    assert len(search) == 4 and all("seed=100" in o and f"lr_protocol={SELECTION_SEED_SEARCH}" in o for o in search)
    assert not any(f"seed={s}" in o for o in search for s in range(5))
    rows = []
    for overrides in search:
        folder = tmp_path / str(len(rows))
        folder.mkdir()
        lr = float(next(o for o in overrides if o.startswith("train.lr=")).split("=")[1])
        (folder / "result.json").write_text(json.dumps({"status": "ok", "val_score": lr}))  # higher rate wins
        rows.append({"overrides": overrides, "run_dir": folder, "cfg": compose([o for o in overrides
                                                                               if not o.startswith("lr_protocol=")])})
    second = seeds_at_selected_rates(variants, rows)
    assert len(second) == 10 and all(f"lr_protocol={SELECTION_SEED_REPORT}" in o for o in second)
    assert sorted(int(o.split("=")[1]) for p in second for o in p if o.startswith("seed=")) == sorted(list(range(5)) * 2)
    full_rates = [lr for v in variants if v.key == ("method=full",) for lr in v.rates]
    assert all(f"train.lr={max(full_rates)}" in p for p in second if "method=full" in p)
    assert not any(o.startswith("train.eval_every=") for p in second for o in p)  # the sweep's own curve
    sparse = seeds_at_selected_rates(variants, rows, report_eval_every=60)  # sweep.report_eval_every
    assert [p[:-1] for p in sparse] == second and all(p[-1] == "train.eval_every=60" for p in sparse)
    assert not any("train.eval_every=60" in o for o in search)  # the search keeps its dense curve for the rungs
    with pytest.raises(ConfigError, match="sweep.selection_seed=3 is also a reporting seed"):
        search_variants(grid, 2, compose, selection_seed=3)


def test_a_sweep_file_with_selection_seed_searches_on_it_and_reports_every_seed(tmp_path: Path) -> None:
    sweep = tmp_path / "conf"
    sweep.mkdir()
    (sweep / "held.yaml").write_text("defaults:\n  - config\n  - _self_\n\nlr_search: 2\nselection_seed: 100\n"
                                     "seeds: 2\nvariants:\n  - [method=full]\n")
    proc = run_cli(["-m", "--config-dir", str(sweep), "--config-name", "held", "model=tiny-llama", *TINY,
                    f"paths.runs={tmp_path / 'runs'}"])
    assert proc.returncode == 0, proc.stderr[-3000:]
    records = [json.loads(p.read_text()) for p in (tmp_path / "runs").glob("*/result.json")]
    search = [r for r in records if r["lr_protocol"] == "selection-seed-search"]
    report = [r for r in records if r["lr_protocol"] == "selection-seed-report"]
    assert sorted(r["seed"] for r in search) == [100, 100] and sorted(r["seed"] for r in report) == [0, 1]
    chosen = select_lr([(r["lr"], 100, r["val_score"]) for r in search if r["status"] == "ok"])[0]
    assert {r["lr"] for r in report} == {chosen}
    assert "learning-rate search on selection seed 100" in proc.stdout + proc.stderr


def test_analysis_leaves_out_exactly_the_held_out_search_runs(tmp_path: Path) -> None:
    from analysis.gain import Study

    def held_out(method: str, rates: dict[float, float], tests: list[float], **kw) -> list[dict]:
        out = [rec(method, 100, lr, val, 0.99, **kw) | {"lr_protocol": "selection-seed-search"}
               for lr, val in rates.items()]  # the search seed's test score is high: it must not be reported
        best = max(rates, key=rates.get)
        return out + [rec(method, s, best, 0.8, t, **kw) | {"lr_protocol": "selection-seed-report"}
                      for s, t in enumerate(tests)]

    records = [*held_out("full", {5e-5: 0.8, 1.5e-4: 0.7}, [0.80, 0.82]),  # 2 reporting seeds
               *held_out("lora", {2e-4: 0.7, 6e-4: 0.8}, [0.78], r=16)]     # 1: still leaves the search out
    study = Study(frame(records, tmp_path))
    for (cell, variant), arm in study.arms.items():
        assert 100 not in arm.seeds and arm.seeds, (variant, arm.seeds)
        assert "selection seed 100 left out" in study.seed_notes[(cell, variant)]
    assert sorted(len(a.seeds) for a in study.arms.values()) == [1, 2]


# ---- successive halving of the search (lr_halving) ----

def test_halving_sweep_resumes_survivors_and_never_selects_a_paused_run(tmp_path: Path) -> None:
    runs = tmp_path / "runs"
    args = ["-m", "model=tiny-llama", *TINY, "method=lora", "sweep.lr_search=4", "sweep.lr_halving=true", "sweep.seeds=2",
            "train.max_steps=8", "train.eval_every=2", "train.eval_subset=8", f"paths.runs={runs}"]
    proc = run_cli(args)
    assert proc.returncode == 0, proc.stderr[-3000:]
    records = [json.loads(p.read_text()) for p in runs.glob("*/result.json")]
    search = [r for r in records if r["seed"] == 0]
    assert len(search) == 4 and len(records) == 5
    # 4 rates to step 2, the best 2 on to step 4, the best one to the end (8): 2 full-budget runs in all
    by_status = sorted((r["status"], r.get("rung_step")) for r in search)
    assert by_status == [("ok", None), ("paused", 2), ("paused", 2), ("paused", 4)], by_status
    (winner,) = [r for r in search if r["status"] == "ok"]
    assert winner["resumed_from"] == "checkpoint-4"  # resumed, not restarted
    assert [p["step"] for p in winner["val_curve"]] == [2, 4, 6, 8]  # the curve before the checkpoint is kept
    (later,) = [r for r in search if r.get("rung_step") == 4]
    assert later["resumed_from"] == "checkpoint-2"
    (report,) = [r for r in records if r["seed"] == 1]
    assert report["lr"] == winner["lr"] and report["status"] == "ok"  # a paused run is never the selected rate
    summary = json.loads((runs / "halving-sweep.json").read_text())
    assert summary[0]["cost_full_runs"] == 2.0 and summary[0]["selected"] == winner["lr"]
    # a tiny random model scores 0 at every rung: the ties are reported and go to the smaller rates
    assert summary[0]["rungs"][0]["tied_across_cut"] == sorted(summary[0]["rates"])
    assert [r["step"] for r in summary[0]["rungs"]] == [2, 4]
    again = run_cli(args)  # resumes: nothing is relaunched, paused runs stay where they stand
    assert again.returncode == 0
    assert "0 to run" in again.stdout + again.stderr and "1 to run" not in again.stdout + again.stderr


def test_halving_with_a_final_margin_runs_the_near_ties_to_the_budget(tmp_path: Path) -> None:
    """sweep.lr_halving_final_margin: the tiny model ties at every rung, so both rates left at the last rung run to
    the end and the final validation score selects (the tie to the smaller rate); a bad margin is refused first."""
    runs = tmp_path / "runs"
    args = ["-m", "model=tiny-llama", *TINY, "method=lora", "sweep.lr_search=4", "sweep.lr_halving=true",
            "sweep.lr_halving_final_margin=0.5", "sweep.selection_seed=100", "sweep.seeds=1", "train.max_steps=8",
            "train.eval_every=2", "train.eval_subset=8", f"paths.runs={runs}"]
    bad = run_cli([*args[:-1], f"paths.runs={tmp_path / 'bad'}", "sweep.lr_halving_final_margin=-1"])
    assert bad.returncode != 0 and "sweep.lr_halving_final_margin=-1" in bad.stderr
    assert not (tmp_path / "bad").exists() or not list((tmp_path / "bad").glob("*/result.json"))
    proc = run_cli(args)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "2 rates within 0.5 of the leader all run to the budget" in proc.stdout + proc.stderr
    records = [json.loads(p.read_text()) for p in runs.glob("*/result.json")]
    search = [r for r in records if r["seed"] == 100]
    assert sorted((r["status"], r.get("rung_step")) for r in search) == [("ok", None), ("ok", None), ("paused", 2),
                                                                          ("paused", 2)]
    finalists = sorted(r["lr"] for r in search if r["status"] == "ok")
    summary = json.loads((runs / "halving-sweep.json").read_text())[0]
    assert summary["finalists"] == finalists and summary["selected"] is None and summary["final_margin"] == 0.5
    (report,) = [r for r in records if r["seed"] == 0]
    assert report["lr"] == finalists[0]  # equal final scores: the smaller rate, as select_lr


def test_adalora_searches_at_full_length_and_restarts_instead_of_resuming(tmp_path: Path) -> None:
    """AdaLoRA's checkpoint holds an adapter cut to its rank pattern (peft) and no rank-allocator state: its
    halving search runs every rate to the end (and so widens past an edge, as a plain search does), it writes no
    checkpoint, and a re-run starts from step 0."""
    runs = tmp_path / "runs"
    args = ["-m", "model=tiny-llama", *TINY, "method=adalora", "sweep.lr_search=2", "sweep.lr_halving=true",
            "sweep.lr_widen=1", "sweep.selection_seed=100", "sweep.seeds=1", "train.max_steps=4",
            "train.eval_every=2", "train.eval_subset=8", f"paths.runs={runs}"]
    proc = run_cli(args)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "cannot resume from a checkpoint: its 2 rates run the full budget" in proc.stdout + proc.stderr
    records = {p.parent: json.loads(p.read_text()) for p in runs.glob("*/result.json") if "_s100_" in p.parent.name}
    assert sorted((r["status"], r.get("rung_step"), r["train_steps_done"]) for r in records.values()) \
        == [("ok", None, 4)] * 3
    # the tiny model ties at every rate, so the smallest (2e-4, AdaLoRA's grid centred on its default) is chosen
    # at the lower edge: the grid widens one rate down
    assert sorted(r["lr"] for r in records.values()) == [6e-5, 2e-4, 6e-4]
    assert json.loads((runs / "halving-sweep.json").read_text())[0]["full_length"] is True
    assert not any((d / "checkpoints").exists() for d in records)
    # a killed run that somehow left a checkpoint: the re-run restarts from step 0 instead of loading it
    run_dir, record = next(iter(records.items()))
    stale = run_dir / "checkpoints" / "checkpoint-2"
    stale.mkdir(parents=True)
    (stale / "trainer_state.json").write_text("{}")
    (run_dir / "result.json").write_text(json.dumps(record | {"status": "interrupted"}))
    again = run_cli(args)
    assert again.returncode == 0, again.stderr[-3000:]
    assert "it restarts from step 0" in again.stdout + again.stderr
    rerun = json.loads((run_dir / "result.json").read_text())
    assert rerun["status"] == "ok" and rerun["resumed_from"] is None
    assert [p["step"] for p in rerun["val_curve"]] == [2, 4] and not (run_dir / "checkpoints").exists()


def test_a_rung_for_a_method_that_cannot_resume_is_refused() -> None:
    cfg = compose(["model=tiny-llama", *TINY, "method=adalora", "rung_step=2"])
    with pytest.raises(ConfigError, match="cannot pause at rung_step=2"):
        validate(cfg)


def test_analysis_counts_halving_rates_as_tried_and_never_reports_a_paused_run(tmp_path: Path) -> None:
    from analysis.gain import Study

    records = []
    for method, kw, lrs in (("full", {}, (5e-5, 1.5e-4)), ("lora", {"r": 16}, (2e-4, 6e-4))):
        records += [rec(method, 0, lrs[0], 0.5, 0.99, **kw) | {"status": "paused", "rung_step": 5, "score": None,
                                                                "val_score": None, "lr_protocol": "two-phase-search"},
                    rec(method, 0, lrs[1], 0.8, 0.90, **kw) | {"lr_protocol": "two-phase-search"},
                    *[rec(method, s, lrs[1], 0.8, 0.80, **kw) | {"lr_protocol": "two-phase-seeds"} for s in (1, 2)]]
    df = frame(records, tmp_path)
    sel = tables.selection(df).set_index("variant")
    assert (sel["n_lrs"] == 2).all() and (sel["selection_seeds"] == "0").all()
    assert sorted(sel["selected_lr"]) == [1.5e-4, 6e-4]  # the finished survivor, never the paused rate
    study = Study(df)
    assert all(arm.seeds == (1, 2) for arm in study.arms.values())  # the search seed is left out as before
    assert tables.failures(df).empty  # a paused rate is not a failure


def test_halving_rungs_follow_the_validation_points_or_explicit_steps() -> None:
    from harness.sweep_plan import SearchVariant, halving_rungs

    cfg = compose(["method=lora", "r=16", "seed=0"])
    variant = SearchVariant(("method=lora",), ["method=lora", "seed=0"], cfg, [1e-4, 2e-4, 6e-4, 2e-3, 6e-3, 2e-2, 6e-2], [])
    rungs = halving_rungs(variant, 800, 50)
    assert [(r.step, r.n_in, r.n_keep) for r in rungs] == [(100, 7, 3), (200, 3, 1)]  # 1/8 and 1/4 of the budget
    assert [(r.step, r.n_in, r.n_keep) for r in halving_rungs(variant, 800, 50, [150, 400])] == [(150, 7, 3), (400, 3, 1)]
    with pytest.raises(ConfigError, match="lr_halving_rungs"):
        halving_rungs(variant, 800, 50, [130, 400])  # validation is not scored at step 130
    with pytest.raises(ConfigError, match="train.eval_every"):
        halving_rungs(variant, 800, 0)
