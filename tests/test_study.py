"""The study manifest (conf/study.yaml) and `python -m harness.study`: every study sweep is in it, run counts
follow the sweep files, the cap drops sweeps from the bottom, bad names are one-line errors, --dry-run runs nothing."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from conftest import REPO
from harness import study
from harness.errors import ConfigError


def run_study(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "harness.study", *args], cwd=REPO, capture_output=True, text=True,
                          timeout=120)


def test_the_manifest_names_existing_sweeps_encoders_first() -> None:
    plans, cap, _ = study.load_plan("cpu")
    names = [p.name for p in plans]
    assert cap == 16 + 6 and len(names) == len(set(names))  # issue 41's study + issue 42's cells
    assert all((REPO / "sweeps" / "study" / f"{n}.yaml").exists() for n in names)
    families = [p.family for p in plans]
    assert families == sorted(families, key=lambda f: f != "encoder")  # every encoder sweep before any causal-LM
    assert all(p.minutes_per_run > 0 for p in plans)
    gpu = study.load_plan("gpu")[2]
    assert gpu == {"encoder": ["model=roberta-base"], "causal": ["model=qwen2.5-0.5b"]}


def test_run_counts_follow_the_sweep_file() -> None:
    assert study.count_runs({"variants": [["method=full"], ["method=lora"]], "seeds": 3, "lr_search": 4,
                             "lr_widen": 2}) == (2 * 6, 2 * 8)            # 4 rates on seed 0 + seeds 1, 2
    assert study.count_runs({"variants": [["method=full"]], "seeds": 5, "lr_search": 3,
                             "selection_seed": 100}) == (8, 8)            # 3 rates on seed 100 + seeds 0..4
    assert study.count_runs({"variants": [["method=full"]], "seeds": 5, "lr_search": 7, "selection_seed": 100,
                             "lr_halving": True}) == (7, 7)              # 7 rates for ~2 full runs + 5 seeds
    assert study.count_runs({"variants": [["method=lora"], ["method=adalora"]], "seeds": 5, "lr_search": 6,
                             "selection_seed": 100, "lr_halving": True, "lr_widen": 2}) \
        == (2 + 5 + 6 + 5, 2 + 5 + 6 + 5 + 2)  # AdaLoRA: no rungs, so its search alone widens
    assert study.count_runs({"variants": [["a"]] * 3, "stages": [["x"], ["y"]],
                             "hydra": {"sweeper": {"params": {"seed": "0"}}}}) == (6, 6)
    grid = {"variants": [["method=full", "train.lr=1e-4,2e-4,4e-4"], ["method=lora", "r=4,16"]], "seeds": 3,
            "hydra": {"sweeper": {"params": {"task.n_train": "256,512"}}}}
    assert study.count_runs(grid) == ((3 + 2) * 2 * 3,) * 2             # comma lists and sweeper axes multiply
    own_grid = {"variants": [["method=lora", "method.lr_grid.values=[1e-3,2e-3,4e-3]", "r=4,16"]], "seeds": 2}
    assert study.count_runs(own_grid) == (2 * 2,) * 2                    # a list value is one value, not a sweep
    sweep = study._sweep_file("intruder-selected", REPO / "sweeps" / "study")  # builds on intruder.yaml
    assert sweep["task"]["n_train"] == 2400 and sweep["sweep"]["lr_search"] == 6


def test_the_cap_drops_sweeps_from_the_bottom() -> None:
    plans = [study.SweepPlan(n, "encoder", 60, 60, 6.0) for n in ("a", "b", "c")]  # 6 h each
    kept, dropped = study.within_cap(plans, 13)
    assert [p.name for p in kept] == ["a", "b"] and [p.name for p in dropped] == ["c"]
    out = run_study("--dry-run", "--cap-hours", "5")
    assert out.returncode == 0, out.stderr
    assert "DROPPED intruder-lm" in out.stdout and "would run: python -m harness.run" in out.stdout
    assert "config-name intruder-lm" not in out.stdout


def test_dry_run_prints_the_plan_and_runs_nothing() -> None:
    out = run_study("--dry-run", "--only", "fair-style", "--", "sweep.seeds=5")
    assert out.returncode == 0, out.stderr
    assert "ESTIMATES" in out.stdout and "fair-style" in out.stdout and "~" in out.stdout
    lines = [line for line in out.stdout.splitlines() if line.startswith("would run: ")]
    assert len(lines) == 5 and lines[0].endswith("analysis.records --restore results/study/fair-style/runs runs/study/fair-style")
    assert lines[1].endswith("paths.runs=runs/study/fair-style paths.shared=runs/study sweep.seeds=5")
    assert "analysis.claims --runs results/study " in lines[-1]
    assert "+ python" not in out.stdout


@pytest.mark.parametrize("args,message", [(["--only", "nope"], "--only names nope"),
                                          (["--scale", "tpu"], "--scale tpu is not in")])
def test_bad_names_are_one_line_errors(args: list[str], message: str) -> None:
    out = run_study("--dry-run", *args)
    assert out.returncode == 2 and message in out.stderr and "Traceback" not in out.stderr


def test_a_manifest_sweep_without_its_file_is_refused(tmp_path: Path) -> None:
    manifest = tmp_path / "study.yaml"
    manifest.write_text("cap_hours: 1\nscales: {cpu: {encoder: []}}\nsweeps:\n"
                        "  - {name: missing, family: encoder, minutes_per_run: {cpu: 1}}\n")
    with pytest.raises(ConfigError, match="sweep 'missing'"):
        study.load_plan("cpu", manifest)


def test_a_run_two_sweeps_name_is_trained_once(tmp_path) -> None:
    """paths.shared: a finished run of the same id and hash in a sibling sweep's folder is copied, not retrained;
    an unfinished one, or one of another config, is not."""
    import json

    from conftest import compose
    from harness.config import resolve
    from harness.run import adopt_shared

    spec = resolve(compose([f"paths.shared={tmp_path}"]))
    source = tmp_path / "lr-ratio" / spec.run_id
    source.mkdir(parents=True)
    here = tmp_path / "tuned-variants" / spec.run_id
    here.mkdir(parents=True)
    (source / "adapter.bin").write_text("weights")
    record = {"status": "running", "config_hash": spec.config_hash, "group": "lr-ratio"}
    (source / "result.json").write_text(json.dumps(record))
    assert adopt_shared(spec, here) is None                      # not finished: trained here
    (source / "result.json").write_text(json.dumps({**record, "status": "ok", "config_hash": "other"}))
    assert adopt_shared(spec, here) is None                      # another config under the same name
    (source / "result.json").write_text(json.dumps({**record, "status": "ok"}))
    adopted = adopt_shared(spec, here)
    assert adopted["group"] == "lr-ratio" and (here / "adapter.bin").read_text() == "weights"
    assert json.loads((here / "result.json").read_text())["status"] == "ok"
    assert adopt_shared(resolve(compose([])), here) is None     # paths.shared unset: no lookup


def test_a_fresh_clone_resumes_from_the_committed_records(tmp_path) -> None:
    """`analysis.records --restore`: committed records go back into the run folder where that run is missing,
    never over a live run; a sweep with no records yet restores nothing."""
    import json

    from analysis.records import main as records

    committed, runs = tmp_path / "results" / "runs", tmp_path / "runs"
    for rid, status in (("a", "ok"), ("b", "paused")):
        (committed / rid).mkdir(parents=True)
        (committed / rid / "result.json").write_text(json.dumps({"run_id": rid, "status": status}))
    (runs / "b").mkdir(parents=True)
    (runs / "b" / "result.json").write_text(json.dumps({"run_id": "b", "status": "running"}))
    assert records(["--restore", str(committed), str(runs)]) == 0
    assert json.loads((runs / "a" / "result.json").read_text())["status"] == "ok"
    assert json.loads((runs / "b" / "result.json").read_text())["status"] == "running"   # the live run is kept
    assert records(["--restore", str(tmp_path / "none"), str(runs)]) == 0
