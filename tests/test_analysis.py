"""The analysis numbers against hand-made run tables (retention with several seeds, missing full-FT partner,
failed runs, Pareto front, recommendation, cost), the W&B loader against a mocked API, the W&B report offline,
and the report built from real tiny-model runs."""

from __future__ import annotations

import json
import math
import sys
import types
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from analysis import report, runs as runs_mod, tables, wandb_report
from analysis.plots import METHOD_COLORS, method_color
from harness.errors import ConfigError

T_975_DF2 = 4.302652729911275  # Student t, 97.5th percentile, 2 degrees of freedom (tables)


def rec(method: str, seed: int, score: float | None, *, r: int | None = None, targets: str | None = None,
        task: str = "classify", model: str = "m", data: str = "d1", status: str = "ok", mem: float = 4e9,
        runtime: float = 100.0, tps: float = 200.0, disk: int = 500_000_000, forgetting=None, lr: float = 1e-4,
        n_eval: int = 100) -> dict:
    """A result.json as harness/pipeline.py writes it, reduced to what the analysis reads."""
    alpha = None if r is None else 2 * r
    cfg = {"task": {"name": task, "n_eval": n_eval}, "model": {"name": model}, "method": {"name": method},
           "r": r, "alpha": alpha, "targets": {"name": targets} if targets else None, "seed": seed,
           "train": {"max_steps": 10, "batch_size": 8, "grad_accum": 1, "max_seq_len": 128, "lr": lr}}
    parts = [task, model, method] + ([f"r{r}"] if r else []) + ([targets] if targets else []) + [f"s{seed}", data, str(lr)]
    out = {"run_id": "_".join(parts), "status": status, "reason": None if status == "ok" else "boom",
           "task": task, "model": model, "method": method, "r": r, "alpha": alpha, "targets": targets, "seed": seed,
           "group": "g", "primary_metric": "accuracy", "score": score, "base_score": 0.3, "params_total": 1000,
           "params_trainable": 1000 if method == "full" else 10 * (r or 1), "peak_mem_bytes": mem,
           "mem_kind": "cpu_rss", "train_tokens_per_s": tps, "train_runtime_s": runtime, "adapter_bytes": disk,
           "data_fingerprint": data, "config": cfg, "lr": lr, "max_steps": 10, "finished_at": f"2026-01-01T00:00:0{seed}"}
    out["trainable_pct"] = 100 * out["params_trainable"] / out["params_total"]
    if forgetting is not None:
        out["forgetting"] = forgetting
    return out


def sweep_records() -> list[dict]:
    """classify: full x3 seeds (mean 0.80), LoRA r=16 x3 seeds, LoRA r=4 one seed, failed runs;
    style: LoRA only (no full-FT partner); a full run on other data that must not partner d1."""
    return [
        rec("full", 0, 0.80, mem=8e9, runtime=200), rec("full", 1, 0.82, mem=8e9, runtime=200),
        rec("full", 2, 0.78, mem=8e9, runtime=200),
        rec("full", 3, 0.0, status="failed", mem=8e9),                          # failed: not in the reference
        rec("lora", 0, 0.76, r=16, targets="qv", mem=5e9, runtime=100, forgetting={"forgetting": 0.1}),
        rec("lora", 1, 0.78, r=16, targets="qv", mem=5e9, runtime=100, forgetting=0.2),
        rec("lora", 2, 0.80, r=16, targets="qv", mem=5e9, runtime=100),
        rec("lora", 3, 0.10, r=16, targets="qv", status="diverged", mem=5e9),    # failed: not averaged
        rec("lora", 0, 0.72, r=4, targets="qv", mem=4.5e9, runtime=90),          # one seed
        rec("lora", 0, 0.50, r=16, targets="qv", task="style", data="d2"),      # no full FT on style
        rec("full", 0, 0.40, data="other"),                                      # other data: its own cell
    ]


def write_runs(root: Path, records: list[dict]) -> Path:
    for r in records:
        folder = root / r["run_id"]
        folder.mkdir(parents=True)
        (folder / "result.json").write_text(json.dumps(r))
    return root


@pytest.fixture
def df(tmp_path: Path) -> pd.DataFrame:
    return runs_mod.load_folders([write_runs(tmp_path / "runs", sweep_records())])


def _row(ret: pd.DataFrame, **where) -> pd.Series:
    mask = np.ones(len(ret), bool)
    for k, v in where.items():
        mask &= (ret[k] == v).to_numpy()
    assert mask.sum() == 1, (where, ret[list(where)])
    return ret[mask].iloc[0]


def test_retention_with_seeds_matches_hand_computation(df: pd.DataFrame) -> None:
    ret = tables.retention(df)
    lora = _row(ret, task="classify", label="lora r=16 qv", model="m")
    a, b = np.array([0.76, 0.78, 0.80]), np.array([0.80, 0.82, 0.78])
    # Fieller's interval for mean(a) / mean(b): the roots of (a - q b)^2 = t^2 (var(a)/n + q^2 var(b)/n)
    va, vb = a.var(ddof=1) / 3, b.var(ddof=1) / 3
    q = np.sort(np.roots([b.mean() ** 2 - T_975_DF2 ** 2 * vb, -2 * a.mean() * b.mean(),
                          a.mean() ** 2 - T_975_DF2 ** 2 * va])) * 100
    assert lora["n_seeds"] == 3 and lora["ref_n"] == 3 and lora["ref_score"] == pytest.approx(0.80)
    assert lora["retention_mean"] == pytest.approx(97.5)
    assert (lora["retention_low"], lora["retention_high"]) == pytest.approx(tuple(q))
    assert tables.format_retention(lora) == f"97.5% [{q[0]:.1f}, {q[1]:.1f}] n=3"
    half = T_975_DF2 * a.std(ddof=1) / math.sqrt(3)
    assert (lora["score_low"], lora["score_high"]) == pytest.approx((0.78 - half, 0.78 + half))
    one = _row(ret, label="lora r=4 qv")
    assert one["retention_mean"] == pytest.approx(90.0) and math.isnan(one["retention_low"])
    assert "no interval" in one["note"] and tables.format_retention(one) == "90.0% (n=1, no CI)"
    full = ret[ret["label"].eq("full") & ret["cell"].str.contains("|d1|", regex=False)].iloc[0]
    assert full["retention_mean"] == pytest.approx(100.0) and full["note"] == "reference"


def test_missing_partner_and_other_data_are_never_divided(df: pd.DataFrame) -> None:
    ret = tables.retention(df)
    style = _row(ret, task="style")
    assert math.isnan(style["retention_mean"]) and "no full-FT run" in style["note"]
    assert tables.format_retention(style) == "no full-FT run on this task/model/data"
    # the full run on other data is its own reference (100%), and did not become d1's reference (0.40)
    assert set(ret.loc[ret["task"].eq("classify") & ret["method"].ne("full"), "ref_score"].round(6)) == {0.8}
    rec_table = tables.recommendations(ret, tables.variant_summary(df))
    assert _row(rec_table, task="style")["note"].startswith("no retention: no full-FT run")


def test_failed_runs_are_listed_and_excluded(df: pd.DataFrame) -> None:
    fails = tables.failures(df)
    assert sorted(fails["status"]) == ["diverged", "failed"]
    assert set(fails["label"]) == {"full", "lora r=16 qv"}
    summary = tables.variant_summary(df)
    lora = summary[summary["label"].eq("lora r=16 qv") & summary["task"].eq("classify")].iloc[0]
    assert lora["n"] == 3 and lora["score"] == pytest.approx(0.78)   # the diverged 0.10 is not averaged in


def test_duplicate_run_id_keeps_the_ok_record(tmp_path: Path) -> None:
    first = rec("full", 0, 0.5, status="failed")
    again = rec("full", 0, 0.8) | {"finished_at": "2026-02-01T00:00:00"}
    df = runs_mod.frame([runs_mod.record_to_row(again, "b"), runs_mod.record_to_row(first, "a")])
    assert len(df) == 1 and df.iloc[0]["status"] == "ok" and df.iloc[0]["score"] == 0.8


def test_same_label_different_config_is_told_apart() -> None:
    records = [rec("lora", 0, 0.7, r=8, targets="qv") for _ in range(2)]
    for i, r in enumerate(records):
        r["run_id"] += f"_{i}"
        r["config"]["method"]["peft_kwargs"] = {"lora_dropout": 0.05 * i}
    df = runs_mod.frame([runs_mod.record_to_row(r, "x") for r in records])
    assert df["label"].nunique() == 2 and all(lbl.startswith("lora r=8 qv #") for lbl in df["label"])
    # two learning rates of one config are one variant (its rate is selected), so they share a label
    same = runs_mod.frame([runs_mod.record_to_row(rec("lora", 0, 0.7, r=8, targets="qv", lr=lr), "x") for lr in (1e-4, 3e-4)])
    assert same["label"].tolist() == ["lora r=8 qv"] * 2 and same["variant"].nunique() == 1


def test_the_validation_schedule_does_not_split_a_variant() -> None:
    """A search run scores validation every 25 steps (halving's rungs), the reporting seeds every 60
    (sweep.report_eval_every): one variant, and at one rate one lr_variant; a change to what is trained splits it."""
    search, report, other = (rec("lora", s, 0.7, r=8, targets="qv") for s in (100, 0, 0))
    search["config"]["train"] |= {"eval_every": 25, "eval_subset": 300}
    report["config"]["train"] |= {"eval_every": 60, "eval_subset": 300}
    other["config"]["train"] |= {"eval_every": 60, "batch_size": 16}
    other["run_id"] += "_b16"
    df = runs_mod.frame([runs_mod.record_to_row(r, "x") for r in (search, report, other)]).set_index("run_id")
    variant, lr_variant = df["variant"], df["lr_variant"]
    assert variant[search["run_id"]] == variant[report["run_id"]] != variant[other["run_id"]]
    assert lr_variant[search["run_id"]] == lr_variant[report["run_id"]]


def test_the_batch_size_is_the_configured_one_times_accumulation() -> None:
    """2400 rows at batch 64 are 38 steps with a short last one: examples / steps (63.2) is not the batch."""
    run = rec("full", 0, 0.8) | {"train_examples": 2400, "train_steps": 38}
    run["config"]["train"] |= {"batch_size": 32, "grad_accum": 2}
    df = runs_mod.frame([runs_mod.record_to_row(run, "x")])
    assert df["batch_size"].iloc[0] == 64.0


def test_same_label_from_two_sweeps_is_named_by_its_sweep_and_budgets_stay_apart() -> None:
    """Configs that differ only in an unused default, reached by two sweeps, are named by the sweep, not a hash;
    the same label at two budgets needs no suffix (the budget is its own column in the reports)."""
    records = [rec("lora", 0, 0.7, r=8, targets="qv") for _ in range(2)]
    for i, r in enumerate(records):
        r["run_id"] += f"_{i}"
        r["group"] = ["intruder", "intruder-selected"][i]
        r["config"]["method"]["lr"] = [2e-4, 6e-4][i]
    df = runs_mod.frame([runs_mod.record_to_row(r, "x") for r in records])
    assert sorted(df["label"]) == ["lora r=8 qv (sweep intruder)", "lora r=8 qv (sweep intruder-selected)"]
    longer = rec("lora", 0, 0.7, r=8, targets="qv")
    longer["run_id"] += "_long"
    longer["config"]["train"]["max_steps"] = longer["max_steps"] = 20
    df = runs_mod.frame([runs_mod.record_to_row(r, "x") for r in (rec("lora", 0, 0.7, r=8, targets="qv"), longer)])
    assert df["label"].tolist() == ["lora r=8 qv"] * 2 and df["budget"].nunique() == 2


def test_report_figures_are_numbered_with_captions(tmp_path: Path) -> None:
    from analysis import report as report_mod

    figures = {"lr_sensitivity": tmp_path / "lr_sensitivity.png", "validation_curves": "no run recorded a curve"}
    report_mod.write_markdown(tmp_path / "r.md", "t", [], [], figures)
    text = (tmp_path / "r.md").read_text()
    assert "### Figure 1. Validation score vs learning rate" in text and "*Figure 1. Validation score" in text
    assert "### Figure 2. Validation curves" in text and "_not drawn: no run recorded a curve_" in text
    assert report_mod.figure_caption(Path("a/intruders_vs_rank.png")).startswith("Intruder dimensions")
    assert report_mod.figure_caption(Path("a/some_new_plot.png")) == "Some new plot"


def test_retention_by_rank_and_by_targets(df: pd.DataFrame) -> None:
    ret = tables.retention(df)
    by_rank = tables.retention_pivot(ret, "r")
    assert list(by_rank.columns) == ["task", "model", "cell", "method", "targets", "r=4", "r=16"]
    row = by_rank[by_rank["task"].eq("classify")].iloc[0]
    assert row["r=4"] == "90.0% (n=1, no CI)" and row["r=16"].startswith("97.5% [")
    by_targets = tables.retention_pivot(ret, "targets")
    assert "qv" in by_targets.columns and set(by_targets["r"]) == {"r=4", "r=16"}


def test_pareto_mask_on_hand_made_points() -> None:
    mem = [1.0, 2.0, 3.0, 2.0, 0.5, 4.0]
    score = [0.5, 0.7, 0.6, 0.7, float("nan"), 0.9]
    # 3.0/0.6 is beaten by 2.0/0.7; the two identical 2.0/0.7 points both stay; NaN is never on the front
    assert tables.pareto_mask(mem, score).tolist() == [True, True, False, True, False, True]
    assert tables.pareto_mask([1, 1], [0.5, 0.6]).tolist() == [False, True]   # same memory, higher score wins


def test_pareto_front_per_task(df: pd.DataFrame) -> None:
    front = tables.pareto(tables.variant_summary(df))
    cls = front[front["task"].eq("classify") & front["cell"].str.contains("|d1|", regex=False)]
    on = dict(zip(cls["label"], cls["on_front"]))
    # r=4 (4.5 GB, 0.72) and r=16 (5 GB, 0.78) and full (8 GB, 0.80) each buy score with memory: all on it
    assert on == {"full": True, "lora r=4 qv": True, "lora r=16 qv": True}
    worse = tables.pareto(pd.concat([tables.variant_summary(df), tables.variant_summary(df).iloc[[0]].assign(
        label="big", variant="x", peak_mem_bytes=9e9, score=0.1)], ignore_index=True))
    assert not worse.loc[worse["label"].eq("big"), "on_front"].iloc[0]


def test_recommendation_picks_lowest_memory_above_the_bar(df: pd.DataFrame) -> None:
    ret, summary = tables.retention(df), tables.variant_summary(df)

    def pick(threshold: float) -> pd.Series:
        table = tables.recommendations(ret, summary, threshold)
        assert len(table) == 3                                         # classify d1, classify other data, style
        return table[table["cell"].str.contains("|d1|", regex=False)].iloc[0]

    at95 = pick(95.0)
    assert at95["recommended"] == "lora r=16 qv" and at95["memory vs full FT"] == pytest.approx(5 / 8)
    assert pick(89.0)["recommended"] == "lora r=4 qv"                # 90% at 4.5 GB beats 97.5% at 5 GB
    at99 = pick(99.0)
    assert at99["recommended"] == "full" and at99["note"] == "nothing else reaches the bar"


def test_cost_table_relative_cost_and_units(df: pd.DataFrame) -> None:
    cost = tables.cost_table(tables.variant_summary(df))
    lora = cost[cost["variant"].eq("lora r=16 qv") & cost["task"].eq("classify")].iloc[0]
    assert lora["relative cost (x full FT)"] == pytest.approx(0.5)
    assert lora["peak memory (GiB)"] == pytest.approx(5e9 / 2**30)
    assert lora["on disk (MiB)"] == pytest.approx(500_000_000 / 2**20) and lora["trainable params"] == 160
    style = cost[cost["task"].eq("style")].iloc[0]
    assert math.isnan(style["relative cost (x full FT)"])


def test_projection_skips_without_estimator_and_uses_it_when_present(df, monkeypatch) -> None:
    summary = tables.variant_summary(df)
    monkeypatch.setitem(sys.modules, "harness.estimate", None)          # import fails
    table, note = tables.projection(summary)
    assert table.empty and note.startswith("no projection: harness.estimate is not available")
    calls = []

    def fake(overrides, device):
        calls.append(overrides)
        gib = (70 if "70b" in overrides[0] else 7) * 2**30 * (2 if "method=full" in overrides else 1)
        return types.SimpleNamespace(memory=types.SimpleNamespace(peak=gib), disk_bytes=2**30, batch_size=8, seq_len=256)

    monkeypatch.setitem(sys.modules, "harness.estimate", types.SimpleNamespace(estimate_overrides=fake))
    table, note = tables.projection(summary, models=("llama-2-7b", "llama-3.1-70b"))
    full = table[table["variant"].eq("full")].iloc[0]
    assert full["llama-2-7b peak (GiB)"] == 14 and full["llama-3.1-70b peak (GiB)"] == 140
    assert ["model=llama-2-7b", "method=lora", "r=16", "targets=qv"] in calls and "batch 8 x 256" in note


def test_projection_with_the_real_estimator(df) -> None:
    pytest.importorskip("harness.estimate")
    summary = tables.variant_summary(df)
    table, note = tables.projection(summary[summary["label"].eq("lora r=16 qv")].head(1), models=("llama-3.1-8b",))
    assert "not projected" not in note, note
    peak = table.iloc[0]["llama-3.1-8b peak (GiB)"]
    assert 15 < peak < 200          # at least the 8B base's bf16 weights (~15 GiB), far below full FT's


def test_method_colours_are_fixed_and_distinct() -> None:
    assert method_color("lora") == METHOD_COLORS["lora"] and method_color("unknown-x") == method_color("unknown-x")
    assert len(set(METHOD_COLORS.values())) == len(METHOD_COLORS)


class FakeSummary(dict):
    """wandb's summary object exposes its values as `_json_dict`."""

    @property
    def _json_dict(self) -> dict:
        return dict(self)


class FakeRun:
    def __init__(self, record: dict, state: str = "finished") -> None:
        self.summary = FakeSummary(record)
        self.config = record["config"]
        self.state, self.name, self.id, self.group = state, record["run_id"], record["run_id"][-8:], record["group"]
        self.url = f"https://wandb.ai/e/p/runs/{self.id}"


class FakeApi:
    def __init__(self, records: list[dict]) -> None:
        self.records, self.calls = records, []

    def runs(self, path: str, filters: dict | None = None, lazy: bool = True):
        self.calls.append((path, filters, lazy))
        return [FakeRun(r) for r in self.records if not filters or r["group"] == filters.get("group")]


def test_wandb_source_gives_the_same_frame_as_folders(df: pd.DataFrame) -> None:
    api = FakeApi(sweep_records())
    from_wandb = runs_mod.load_wandb("p", group="g", entity="e", api=api)
    assert api.calls == [("e/p", {"group": "g"}, False)]
    cols = [c for c in runs_mod.COLUMNS if c != "source"]
    pd.testing.assert_frame_equal(from_wandb[cols], df[cols])
    assert from_wandb["source"].str.startswith("https://wandb.ai/").all()
    pd.testing.assert_frame_equal(tables.retention(from_wandb), tables.retention(df))


def test_wandb_run_killed_before_finishing_reads_from_config_and_state() -> None:
    record = rec("lora", 0, None, r=8, targets="qv")
    bare = {"config": record["config"], "group": "g", "run_id": record["run_id"]}
    run = FakeRun(bare | {"config": record["config"]}, state="crashed")
    run.summary = FakeSummary({})
    out = runs_mod.wandb_record(run)
    assert (out["status"], out["method"], out["r"], out["targets"], out["task"]) == ("failed", "lora", 8, "qv", "classify")
    with pytest.raises(ConfigError, match="no runs in group 'nope'"):
        runs_mod.load_wandb("p", group="nope", api=FakeApi(sweep_records()))


def test_report_cli_writes_html_markdown_pngs(tmp_path: Path, capsys) -> None:
    root = write_runs(tmp_path / "runs", sweep_records())
    out = tmp_path / "reports" / "demo"
    assert report.main(["--runs", str(root), "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "97.5% [" in printed and "no full-FT run on this task/model/data" in printed
    pngs = sorted(p.name for p in (out / "figures").glob("*.png"))
    assert pngs == ["adapter_size_vs_rank.png", "forgetting_vs_score.png", "retention_vs_rank.png",
                    "score_vs_memory.png", "tokens_per_s.png"]
    page = (out / "report.html").read_text()
    assert page.count("src='data:image/png;base64,") == 5 and "figures/" not in page   # self-contained
    md = (out / "report.md").read_text()
    assert all(f"(figures/{p})" in md for p in pngs) and "| lora r=16 qv" in md
    assert (out / "tables" / "retention.csv").exists() and (out / "tables" / "failures.csv").exists()


def test_report_cli_errors_are_one_line(tmp_path: Path, capsys) -> None:
    assert report.main(["--runs", str(tmp_path / "absent")]) == 2
    assert "does not exist" in capsys.readouterr().err
    (tmp_path / "empty").mkdir()
    assert report.main(["--runs", str(tmp_path / "empty"), "--out", str(tmp_path / "o")]) == 2
    assert "no result.json under" in capsys.readouterr().err
    root = write_runs(tmp_path / "runs", sweep_records()[:2])
    assert report.main(["--runs", str(root), "--out", str(tmp_path / "o"), "--threshold", "0"]) == 2
    assert report.main(["--source", "wandb"]) == 2 and "--project" in capsys.readouterr().err


def test_wandb_report_offline_writes_a_definition_that_reads_back(tmp_path: Path, monkeypatch, capsys) -> None:
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))                       # no ~/.netrc: not logged in
    out = tmp_path / "def.json"
    assert wandb_report.main(["--project", "peft-harness", "--group", "classify", "--out", str(out)]) == 0
    said = capsys.readouterr().out
    assert "not logged in" in said and f"--publish {out}" in said
    spec = json.loads(out.read_text())
    assert spec["project"]["name"] == "peft-harness"
    back = wandb_report.load_definition(out)
    grids = [b for b in back.blocks if type(b).__name__ == "PanelGrid"]
    grid = grids[0]
    kinds = [type(p).__name__ for p in grid.panels]
    assert kinds == ["ParallelCoordinatesPlot", "ScatterPlot", "ScatterPlot", "BarPlot", "BarPlot"]
    # the second grid: the claims ledger and retention tables analysis.claims logs into the group
    assert [(type(p).__name__, p.table_name) for p in grids[1].panels] == [
        ("WeavePanelSummaryTable", "claims_ledger"), ("WeavePanelSummaryTable", "retention")]
    columns = [c.metric.name for c in grid.panels[0].columns]
    assert columns == ["method.name", "r", "targets.name", "peak_mem_bytes", "score"]
    assert "group" in json.dumps(spec) and "classify" in json.dumps(spec)
    assert wandb_report.main(["--publish", str(out)]) == 2                # publishing needs a login: one line
    assert "wandb login" in capsys.readouterr().err


def test_wandb_report_publish_failure_falls_back_to_the_definition(tmp_path: Path, monkeypatch, capsys) -> None:
    monkeypatch.setattr(wandb_report, "has_credentials", lambda: True)
    monkeypatch.delenv("WANDB_MODE", raising=False)

    def unreachable(*a, **k):
        raise ConnectionError("api.wandb.ai unreachable")

    monkeypatch.setattr(wandb_report, "publish", unreachable)
    out = tmp_path / "def.json"
    assert wandb_report.main(["--project", "p", "--group", "g", "--out", str(out)]) == 0
    assert "publishing failed (ConnectionError" in capsys.readouterr().out and out.exists()


def test_report_from_real_tiny_runs(tmp_path: Path) -> None:
    """Records the pipeline really writes load, compare and plot (tiny random model: scores near zero)."""
    from conftest import TINY, run_inprocess

    root = tmp_path / "runs"
    for method in (["method=full"], ["method=lora", "r=4"]):
        run_inprocess(["model=tiny-llama", *TINY, *method], root)
    df = runs_mod.load_folders([root])
    assert len(df) == 2 and df["status"].eq("ok").all() and df["cell"].nunique() == 1
    assert df[["peak_mem_bytes", "train_tokens_per_s", "adapter_bytes", "params_trainable", "score"]].notna().all().all()
    ret = tables.retention(df)
    assert list(ret["label"]) == ["full", "lora r=4 qv"] and ret["reference"].eq("full").all()
    written = report.build(df, tmp_path / "rep")
    assert written["html"].exists() and {"score_vs_memory", "tokens_per_s", "adapter_size_vs_rank"} <= set(written)


def test_a_held_out_selection_seed_is_left_out_of_the_reported_seeds(tmp_path: Path) -> None:
    """Halving chose full FT's rate on seed 100; seeds 0-2 report at it. The search run is not one of them (as in
    the ledger), and a variant whose only run at the rate is the search run still shows that run."""
    rows = [rec("full", s, 0.80 + 0.01 * s, lr=5e-5) | {"lr_protocol": "selection-seed-report", "val_score": 0.8}
            for s in range(3)]
    rows.append(rec("full", 100, 0.99, lr=5e-5) | {"lr_protocol": "selection-seed-search", "val_score": 0.8})
    rows.append(rec("lora", 100, 0.70, r=16, targets="qv", lr=2e-3) | {"lr_protocol": "selection-seed-search",
                                                                       "val_score": 0.7})
    df = runs_mod.load_folders([write_runs(tmp_path / "runs", rows)])
    chosen = tables.at_selected_lr(df)
    assert sorted(chosen.loc[chosen["method"] == "full", "seed"].astype(int)) == [0, 1, 2]
    assert chosen.loc[chosen["method"] == "lora", "seed"].astype(int).tolist() == [100]
    full = _row(tables.retention(df), label="full")
    assert full["n_seeds"] == 3 and full["score_mean"] == pytest.approx(0.81)


def test_the_gain_table_tells_an_unlearned_cell_from_one_without_full_ft() -> None:
    from analysis.report import gain_display

    gain = pd.DataFrame([{"task": "classify", "model": "m", "label": "lora", "learned": False, "reference": None},
                         {"task": "classify", "model": "m", "label": "lora", "learned": False, "reference": "full"},
                         {"task": "classify", "model": "m", "label": "lora", "learned": True, "reference": "full"}])
    assert list(gain_display(gain)["learned"]) == ["no full-FT run here", "NOT LEARNED", "yes"]
