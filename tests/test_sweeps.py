"""Sweeps: every sweep file composes; equivalent runs run once; a failing run does not stop the grid; a killed
sweep resumes where it stopped; the submitit local launcher runs a grid."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir

from conftest import REPO, TINY, conf_with, run_cli
from harness.sweep_plan import SWEEP_KEYS, sweep_settings
from harness.assets import CONF_DIR
from harness.config import effective_config

# sweeps/ holds the grids of `make sweep`, sweeps/study/ those behind the claims ledger (`make study`)
SWEEP_FILES = {p.stem: p for folder in ("sweeps", "sweeps/study") for p in (REPO / folder).glob("*.yaml")}
SWEEPS = sorted(SWEEP_FILES)
TINY_SWEEP = ["model=tiny-llama", *TINY]


@pytest.mark.parametrize("name", SWEEPS)
def test_every_sweep_header_is_its_command_and_purpose(name: str) -> None:
    # the header: the command, one line of purpose and where its budget calibration lives (committed data)
    lines = SWEEP_FILES[name].read_text().splitlines()
    header = lines[:next(i for i, line in enumerate(lines) if not line.startswith("#"))]
    assert header[0].startswith(f"# make sweep TASK={name} ") and len(header) <= 6, header
    calibration = f"results/study/budget/{name}.md"
    assert header[-1].endswith(calibration) and (REPO / calibration).exists()


def folders(runs: Path) -> dict[str, dict]:
    return {p.name: json.loads((p / "result.json").read_text()) for p in runs.iterdir() if (p / "result.json").exists()}


@pytest.mark.parametrize("name", SWEEPS)
def test_every_sweep_file_composes_with_its_grid(name: str, tmp_path: Path) -> None:
    from hydra._internal.core_plugins.basic_sweeper import BasicSweeper
    from hydra.core.override_parser.overrides_parser import OverridesParser

    conf_with(SWEEP_FILES[name].parent, tmp_path / "conf")  # a sweep file may build on another: defaults: [intruder]

    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        base = compose(config_name="config", overrides=[])
    with initialize_config_dir(config_dir=str(tmp_path / "conf"), version_base="1.3"):
        sweep_cfg = compose(config_name=name, return_hydra_config=True)
    params = dict(sweep_cfg.hydra.sweeper.get("params") or {})
    # a variant's own sweep (`train.lr=1e-4,2e-4`) expands as the sweeper does it: one variant per value
    settings = sweep_settings(sweep_cfg)
    assert not any(key in sweep_cfg for key in SWEEP_KEYS), f"sweeps/{name}.yaml: sweep settings go under `sweep:`"
    variants = [expanded for v in settings["variants"] or []
                for expanded in BasicSweeper.split_arguments(OverridesParser.create().parse_overrides(list(v)), None)[0]]
    assert "method" in params or (variants and all(any(o.startswith("method=") for o in v) for v in variants)), \
        f"sweeps/{name}.yaml must sweep method (an axis, or in every variant)"
    assert "seed" in params or int(settings["seeds"] or 1) > 1, f"sweeps/{name}.yaml must sweep seed (or set sweep.seeds)"
    parsed = OverridesParser.create().parse_overrides([f"{k}={v}" for k, v in params.items()])
    with initialize_config_dir(config_dir=str(tmp_path / "conf"), version_base="1.3"):
        # every value of every axis, and every variant, composes (a typo in a method or targets name fails here)
        for o in parsed:
            values = list(o.sweep_string_iterator()) if o.is_sweep_override() else [o.get_value_element_as_str()]
            for v in values:
                cfg = compose(config_name=name, overrides=[f"{o.key_or_group}={v}"])
                assert cfg.group == name
                effective_config(cfg)
        for variant in variants or [[]]:
            for stage in [list(st) for st in settings["stages"] or []] or [[]]:  # continual stages too
                cfg = compose(config_name=name, overrides=variant + stage)
                assert cfg.group == name
                effective_config(cfg)
    assert base.group is None


def test_equivalent_runs_run_once_and_the_summary_counts_them(tmp_path: Path) -> None:
    proc = run_cli(["-m", *TINY_SWEEP, "method=full,lora", "r=4,8", f"paths.runs={tmp_path}"])
    assert proc.returncode == 0, proc.stderr[-3000:]
    runs = folders(tmp_path)
    assert len(runs) == 3  # full x {4, 8} is one run
    assert sorted(r["method"] for r in runs.values()) == ["full", "lora", "lora"]
    assert "4 grid points -> 3 distinct runs (1 equivalent merged)" in proc.stderr + proc.stdout
    assert "3 runs, 3 ok" in proc.stdout
    summary = (tmp_path / "sweep-sweep.csv").read_text().splitlines()
    assert len(summary) == 4


def test_a_failing_run_does_not_stop_the_sweep(tmp_path: Path) -> None:
    # r=100000 exceeds every layer of the tiny model: recorded as invalid, the other ranks still run
    proc = run_cli(["-m", *TINY_SWEEP, "r=4,100000,8", f"paths.runs={tmp_path}"])
    assert proc.returncode == 0, proc.stderr[-3000:]
    runs = folders(tmp_path)
    statuses = sorted((r["r"], r["status"]) for r in runs.values())
    assert len(runs) == 3
    bad = [r for r in runs.values() if r["status"] == "invalid"]
    assert len(bad) == 1 and "r=100000 exceeds" in bad[0]["reason"], statuses
    assert sum(r["status"] == "ok" for r in runs.values()) == 2
    assert "2 ok, 1 invalid" in proc.stdout
    # resumed: the invalid run is not tried again while its config and the code that rejected it are unchanged
    again = run_cli(["-m", *TINY_SWEEP, "r=4,100000,8", f"paths.runs={tmp_path}"])
    assert again.returncode == 0, again.stderr[-3000:]
    assert "2 already ok and 1 invalid under the same config and code (not retried; rerun=true retries), 0 to run" \
        in again.stderr + again.stdout
    assert folders(tmp_path)[next(n for n, r in runs.items() if r["status"] == "invalid")] == bad[0]  # untouched


def test_killed_sweep_resumes_where_it_stopped(tmp_path: Path) -> None:
    args = [sys.executable, "-m", "harness.run", "-m", *TINY_SWEEP, "seed=0,1,2", "train.max_steps=40",
            f"paths.runs={tmp_path}"]
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    proc = subprocess.Popen(args, cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    deadline = time.time() + 300
    try:  # kill the whole sweep while its second run trains
        while time.time() < deadline:
            runs = folders(tmp_path) if tmp_path.exists() else {}
            if sum(r["status"] == "ok" for r in runs.values()) == 1 and any(r["status"] == "running" for r in runs.values()):
                break
            time.sleep(0.2)
        os.killpg(proc.pid, signal.SIGKILL)
    finally:
        proc.wait(timeout=60)
    before = folders(tmp_path)
    finished = [name for name, r in before.items() if r["status"] == "ok"]
    assert len(finished) == 1, before
    mtime = (tmp_path / finished[0] / "result.json").stat().st_mtime_ns
    resumed = run_cli(["-m", *TINY_SWEEP, "seed=0,1,2", "train.max_steps=40", f"paths.runs={tmp_path}"])
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "1 already ok, 2 to run" in resumed.stderr + resumed.stdout
    after = folders(tmp_path)
    assert len(after) == 3 and all(r["status"] == "ok" for r in after.values())
    assert (tmp_path / finished[0] / "result.json").stat().st_mtime_ns == mtime  # not re-run


def test_submitit_local_launcher_runs_a_two_run_sweep(tmp_path: Path) -> None:
    proc = run_cli(["-m", "hydra/launcher=submitit_local", *TINY_SWEEP, "seed=0,1", f"paths.runs={tmp_path}"], timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    runs = folders(tmp_path)
    assert len(runs) == 2 and all(r["status"] == "ok" for r in runs.values())
    assert (tmp_path / ".submitit").is_dir()


@pytest.mark.slow
def test_load_fifty_runs_with_failures_and_a_killed_worker(tmp_path: Path) -> None:
    """52 tiny runs on 2 joblib workers, 13 invalid on purpose, one worker SIGKILLed midway; then a re-run."""
    grid = ["-m", "hydra/launcher=joblib", "hydra.launcher.n_jobs=2", *TINY_SWEEP, "r=4,8,16,100000",
            "seed=range(0,13)", f"paths.runs={tmp_path}"]
    args = [sys.executable, "-m", "harness.run", *grid]
    proc = subprocess.Popen(args, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    deadline = time.time() + 600
    victim = None
    while time.time() < deadline and victim is None:
        runs = folders(tmp_path) if tmp_path.exists() else {}
        if sum(r["status"] == "ok" for r in runs.values()) >= 10:
            running = [r for r in runs.values() if r["status"] == "running" and r.get("pid") != proc.pid]
            if running:
                victim = running[0]["pid"]
                os.kill(victim, signal.SIGKILL)
        time.sleep(0.1)
    out, _ = proc.communicate(timeout=900)
    assert victim is not None, out[-3000:]
    first = folders(tmp_path)
    # every folder holds exactly one complete record whose status is true; none says "running"
    assert all(r["status"] in ("ok", "invalid", "interrupted") for r in first.values()), {r["status"] for r in first.values()}
    killed = [r for r in first.values() if r["status"] == "interrupted"]
    assert any(r["pid"] == victim for r in killed)
    summary = (tmp_path / "sweep-sweep.csv").read_text().splitlines()[1:]
    assert len(summary) == 52
    counted = {s: sum(line.split(",")[1] == s for line in summary) for s in ("ok", "invalid", "interrupted", "missing")}
    assert counted["ok"] == sum(r["status"] == "ok" for r in first.values())
    assert counted["interrupted"] == len(killed)
    assert counted["missing"] == 52 - len(first)
    ok_before = {name for name, r in first.items() if r["status"] == "ok"}
    mtimes = {name: (tmp_path / name / "result.json").stat().st_mtime_ns for name in ok_before}
    # re-run: only what is missing, interrupted or failed runs again (an invalid config stays rejected, unretried)
    invalid_before = sum(r["status"] == "invalid" for r in first.values())
    again = subprocess.run(args, cwd=REPO, capture_output=True, text=True, timeout=900)
    assert again.returncode == 0, again.stderr[-3000:]
    assert (f"{len(ok_before)} already ok and {invalid_before} invalid under the same config and code (not retried; "
            f"rerun=true retries), {52 - len(ok_before) - invalid_before} to run") in again.stdout + again.stderr
    final = folders(tmp_path)
    assert len(final) == 52
    assert sum(r["status"] == "ok" for r in final.values()) == 39
    assert sum(r["status"] == "invalid" for r in final.values()) == 13
    assert all((tmp_path / n / "result.json").stat().st_mtime_ns == m for n, m in mtimes.items())
    assert "52 runs, 39 ok, 13 invalid" in again.stdout


def test_joblib_workers_divide_the_cores(tmp_path: Path) -> None:
    """joblib's loky workers get OMP_NUM_THREADS = cores // n_jobs (unless the caller set it), which torch reads:
    two runs at once on this machine each train with half the cores, recorded as `torch_threads`."""
    runs = tmp_path / "runs"
    env = {k: v for k, v in os.environ.items() if k not in ("OMP_NUM_THREADS", "MKL_NUM_THREADS")}
    proc = subprocess.run([sys.executable, "-m", "harness.run", "-m", "hydra/launcher=joblib", "hydra.launcher.n_jobs=2",
                           *TINY_SWEEP, "seed=0,1", f"paths.runs={runs}"],
                          cwd=REPO, capture_output=True, text=True, timeout=600, env=env)
    assert proc.returncode == 0, proc.stderr[-2000:]
    records = folders(runs)
    assert len(records) == 2
    assert {r["torch_threads"] for r in records.values()} == {max(1, (os.cpu_count() or 1) // 2)}


def test_joblib_with_several_jobs_is_refused_on_cuda(monkeypatch) -> None:
    import torch
    from omegaconf import OmegaConf

    from harness.errors import ConfigError
    from harness.sweeper import check_one_run_per_gpu

    joblib = "hydra_plugins.hydra_joblib_launcher.joblib_launcher.JoblibLauncher"
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    for n_jobs in (2, -1, None):
        with pytest.raises(ConfigError, match="several runs on one GPU"):
            check_one_run_per_gpu(OmegaConf.create({"_target_": joblib, "n_jobs": n_jobs}))
    check_one_run_per_gpu(OmegaConf.create({"_target_": joblib, "n_jobs": 1}))
    check_one_run_per_gpu(OmegaConf.create({"_target_": "hydra._internal.core_plugins.basic_launcher.BasicLauncher"}))
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    check_one_run_per_gpu(OmegaConf.create({"_target_": joblib, "n_jobs": 2}))  # CPU: joblib divides the cores
