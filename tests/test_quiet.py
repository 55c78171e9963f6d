"""A fresh clone's runs say where to look next and how long is left, without stray warnings: no hub check when an
adapter is saved, no bitsandbytes / kernels hub lines on import, a run's progress as tqdm lines in logs, and a
sweep's wall-time estimate and progress line."""

from __future__ import annotations

import logging
import subprocess
import sys
import warnings
from pathlib import Path
from types import SimpleNamespace

from omegaconf import OmegaConf

from conftest import REPO, compose

HUB_ID = "HuggingFaceTB/SmolLM2-135M-Instruct"


def test_saving_an_adapter_asks_no_hub(tmp_path: Path, monkeypatch) -> None:
    from harness.assets import cache_dir
    from harness.config import effective_config
    from harness.methods import apply_method, plan_method, save_trained
    from harness.models import load_model, load_tokenizer

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    cfg = compose(["model=tiny-llama", "method=lora", f"paths.runs={tmp_path}"])
    eff = effective_config(cfg)
    cache = cache_dir(cfg.paths.cache)
    model = load_model(cfg.model, cache, precision="fp32", tokenizer=load_tokenizer(cfg.model, cache))
    plan = plan_method(model, eff, "causal_lm")
    model = apply_method(model, plan)
    model.peft_config["default"].base_model_name_or_path = HUB_ID  # as a bundled model's adapter names its base
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        save_trained(model, plan, tmp_path / "adapter")
    assert not [w for w in caught if "Could not find a config file" in str(w.message)]
    with warnings.catch_warnings(record=True) as caught:  # the check this avoids: peft's "auto" does warn offline
        warnings.simplefilter("always")
        model.save_pretrained(tmp_path / "auto")
    assert [w for w in caught if "Could not find a config file" in str(w.message)]
    assert (tmp_path / "adapter" / "adapter_config.json").exists()


def test_importing_peft_through_the_harness_logs_no_hub_lines() -> None:
    code = "import harness, peft, bitsandbytes; print('imported')"
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=300,
                         env={"HF_HUB_OFFLINE": "1", "PATH": "/usr/bin:/bin"})
    assert out.returncode == 0 and "imported" in out.stdout, out.stderr[-2000:]
    assert "kernels-community" not in out.stderr and "trust" not in out.stderr, out.stderr[-2000:]


def test_a_one_off_run_says_where_to_look_next(tmp_path: Path) -> None:
    from harness.pipeline import next_steps

    lines = next_steps(tmp_path / "classify_x_lora_s0_abc")
    assert str(tmp_path / "classify_x_lora_s0_abc") in lines[0]
    assert "analysis.report --runs" in lines[1] and "report.html" in lines[1]
    assert sum(line.lstrip().startswith(("next", "make", "python")) for line in lines[2:]) == 3


def test_progress_line_without_a_terminal(capsys) -> None:
    from harness.training import ProgressLine

    line = ProgressLine()
    state = SimpleNamespace(global_step=0, max_steps=80, is_world_process_zero=True)
    line.on_train_begin(None, state, None)
    state.global_step = 40
    line.on_log(None, state, None, logs={"loss": 1.0})
    line.on_log(None, state, None, logs={"train_loss": 1.0})  # the closing summary prints no second line
    out = capsys.readouterr().out.splitlines()
    assert len(out) == 1 and out[0].startswith("train  50%") and "40/80" in out[0] and "<" in out[0]  # ETA


def test_sweep_estimate_and_progress(tmp_path: Path, caplog) -> None:
    from harness.results import write_json_atomic
    from harness.sweep_progress import progress_batch_size, run_wall_s, sweep_progress, wall_time_estimate

    rows = []
    for i, (start, end) in enumerate((("10:00:00", "10:02:00"), ("11:00:00", "11:04:00"))):
        run_dir = tmp_path / f"run{i}"
        run_dir.mkdir()
        write_json_atomic(run_dir / "result.json", {"status": "ok", "started_at": f"2026-12-06T{start}+00:00",
                                                    "finished_at": f"2026-12-06T{end}+00:00"})
        rows.append({"run_dir": run_dir, "done": True})
    rows.append({"run_dir": tmp_path / "missing", "done": False})
    assert run_wall_s({"started_at": "2026-12-06T10:00:00+00:00"}) is None
    text = wall_time_estimate(rows, 4)
    assert "4 runs to go, about 12:00" in text and "median 03:00 per run over 2 finished runs" in text
    assert "no finished run" in wall_time_estimate(rows[2:], 3)
    basic = OmegaConf.create({"_target_": "hydra._internal.core_plugins.basic_launcher.BasicLauncher"})
    joblib = OmegaConf.create({"_target_": "hydra_plugins.hydra_joblib_launcher.joblib_launcher.JoblibLauncher",
                               "n_jobs": 2})
    assert (progress_batch_size(basic, 5), progress_batch_size(joblib, 5), progress_batch_size({}, 5)) == (1, 2, 5)
    with caplog.at_level(logging.INFO, logger="harness.sweeper"), sweep_progress(3) as advance:
        advance(1)
        advance(2)
    progress = [r.getMessage() for r in caplog.records if "sweep progress" in r.getMessage()]
    assert len(progress) == 2 and "1/3" in progress[0] and "3/3" in progress[1]
