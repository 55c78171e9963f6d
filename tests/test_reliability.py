"""Faults lose no run and no result: OOM, NaN, signals, a full disk, W&B failures; runs resume and reproduce."""

from __future__ import annotations

import errno
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from transformers import TrainerCallback

from conftest import REPO, TINY, compose, run_cli, run_inprocess
from harness.config import run_id

TINY_ARGS = ["model=tiny-llama", *TINY]


def run_main_inprocess(args: list[str], monkeypatch) -> int:
    """harness.run.main exactly as the CLI runs it (Hydra and all), in this process so faults can be injected."""
    import harness.run

    monkeypatch.setattr(sys, "argv", ["harness.run", *args])
    with pytest.raises(SystemExit) as exit_info:
        harness.run.main()
        raise SystemExit(0)
    return exit_info.value.code


def inject_callback(monkeypatch, callback: TrainerCallback) -> None:
    import harness.phases.tuning as tuning

    real = tuning.build_trainer

    def build(model, tokenizer, train_ds, args, kind, callbacks):
        return real(model, tokenizer, train_ds, args, kind, [*callbacks, callback])

    monkeypatch.setattr(tuning, "build_trainer", build)


def only_record(runs: Path) -> dict:
    records = list(runs.glob("*/result.json"))
    assert len(records) == 1, records
    return json.loads(records[0].read_text())


class RaiseAtStep(TrainerCallback):
    def __init__(self, exc: BaseException):
        self.exc = exc

    def on_step_end(self, args, state, control, **kwargs):
        raise self.exc


def test_out_of_memory_is_recorded_as_oom(runs: Path, monkeypatch, capsys) -> None:
    inject_callback(monkeypatch, RaiseAtStep(torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")))
    code = run_main_inprocess([*TINY_ARGS, f"paths.runs={runs}"], monkeypatch)
    record = only_record(runs)
    assert code == 1 and record["status"] == "oom" and "out of memory" in record["reason"]
    assert record["run_id"].startswith("classify_tiny-llama") and record["base_score"] is not None
    assert "run oom:" in capsys.readouterr().err


def test_cpu_memory_cap_is_recorded_as_oom(runs: Path, monkeypatch) -> None:
    cap = RuntimeError("[enforce fail at alloc_cpu.cpp:117] DefaultCPUAllocator: can't allocate memory: you tried to allocate 4096 bytes")
    inject_callback(monkeypatch, RaiseAtStep(cap))
    assert run_main_inprocess([*TINY_ARGS, f"paths.runs={runs}"], monkeypatch) == 1
    assert only_record(runs)["status"] == "oom"


def test_nan_loss_is_recorded_as_diverged(runs: Path, monkeypatch) -> None:
    import harness.phases.prepare as prepare

    real = prepare.load_model

    def poisoned(*args, **kwargs):
        model = real(*args, **kwargs)
        with torch.no_grad():
            model.model.norm.weight.fill_(float("nan"))  # frozen under LoRA, so the loss is NaN from step 1
        return model

    monkeypatch.setattr(prepare, "load_model", poisoned)
    assert run_main_inprocess([*TINY_ARGS, f"paths.runs={runs}"], monkeypatch) == 1
    record = only_record(runs)
    assert record["status"] == "diverged" and "non-finite loss at step 1" in record["reason"]
    assert not (runs / record["run_id"] / "adapter").exists()


def test_disk_full_while_saving_leaves_no_valid_looking_adapter(runs: Path, monkeypatch) -> None:
    import peft

    def full_disk(self, path, *args, **kwargs):
        Path(path).mkdir(parents=True, exist_ok=True)
        (Path(path) / "adapter_model.safetensors").write_bytes(b"\0" * 100)  # half written
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(peft.PeftModel, "save_pretrained", full_disk)
    assert run_main_inprocess([*TINY_ARGS, f"paths.runs={runs}"], monkeypatch) == 1
    record = only_record(runs)
    run_dir = runs / record["run_id"]
    assert record["status"] == "failed" and record["reason"].startswith("disk full")
    assert not (run_dir / "adapter").exists() and not (run_dir / "adapter.partial").exists()


def test_wandb_init_failure_does_not_stop_the_run(runs: Path, monkeypatch) -> None:
    import wandb

    def broken_init(*args, **kwargs):
        raise wandb.errors.CommError("could not reach api.wandb.ai")

    monkeypatch.setattr(wandb, "init", broken_init)
    args = [o for o in TINY_ARGS if not o.startswith("tracking")] + ["tracking=wandb", "tracking.mode=online"]
    result, run_dir = run_inprocess(args, runs)
    assert result["status"] == "ok" and json.loads((run_dir / "result.json").read_text())["score"] is not None


def test_wandb_failing_mid_run_does_not_stop_training(runs: Path, monkeypatch) -> None:
    from transformers.integrations import WandbCallback

    def broken_log(self, *args, **kwargs):
        raise ConnectionError("wandb backend went away")

    monkeypatch.setattr(WandbCallback, "on_log", broken_log)
    args = [o for o in TINY_ARGS if not o.startswith("tracking")] + ["tracking=wandb", "tracking.mode=offline"]
    result, run_dir = run_inprocess(args, runs)
    assert result["status"] == "ok" and result["train_runtime_s"] > 0
    assert list((run_dir / "wandb").glob("offline-run-*/*.wandb")), "the offline W&B copy is kept for `wandb sync`"


def test_same_config_and_seed_reproduce_score_and_loss_curve(tmp_path: Path) -> None:
    args = [*TINY_ARGS, "train.max_steps=4", "train.lr=1e-2"]
    first, _ = run_inprocess(args, tmp_path / "a")
    second, _ = run_inprocess(args, tmp_path / "b")
    assert first["loss_curve"] == second["loss_curve"] and len(first["loss_curve"]) == 4
    assert first["score"] == second["score"] and first["metrics"] == second["metrics"]
    for key in ("data_fingerprint", "model_fingerprint", "config", "versions", "git_commit"):
        assert first[key] == second[key] and first[key] is not None, key
    other, _ = run_inprocess([*args, "seed=1"], tmp_path / "c")
    assert other["loss_curve"] != first["loss_curve"]


def test_sigterm_records_interrupted(tmp_path: Path) -> None:
    proc = subprocess.Popen([sys.executable, "-m", "harness.run", *TINY_ARGS, "train.max_steps=100000",
                             f"paths.runs={tmp_path}"], cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    wait_for_status(tmp_path, "running", proc)
    time.sleep(1.0)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err[-2000:]
    record = only_record(tmp_path)
    assert record["status"] == "interrupted" and "SIGTERM" in record["reason"]


def wait_for_status(runs: Path, status: str, proc: subprocess.Popen, timeout: float = 120, checkpoint: bool = False) -> Path:
    deadline = time.time() + timeout
    while time.time() < deadline:
        assert proc.poll() is None, "the run ended before the signal"
        for record in runs.glob("*/result.json"):
            try:
                ok = json.loads(record.read_text())["status"] == status
            except (OSError, json.JSONDecodeError):  # atomic writes: never half a file
                pytest.fail("result.json was read half-written")
            if ok and (not checkpoint or list(record.parent.glob("checkpoints/checkpoint-*/trainer_state.json"))):
                return record.parent
        time.sleep(0.1)
    pytest.fail(f"no run reached status {status}")


def test_killed_run_resumes_from_its_last_checkpoint(tmp_path: Path) -> None:
    args = [*TINY_ARGS, "train.max_steps=400", "train.save_steps=5", f"paths.runs={tmp_path}"]
    proc = subprocess.Popen([sys.executable, "-m", "harness.run", *args], cwd=REPO,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    run_dir = wait_for_status(tmp_path, "running", proc, checkpoint=True)
    proc.kill()  # SIGKILL: no handler runs
    proc.wait(timeout=60)
    assert json.loads((run_dir / "result.json").read_text())["status"] == "running"
    again = run_cli(args)
    assert again.returncode == 0, again.stderr[-2000:]
    record = json.loads((run_dir / "result.json").read_text())
    assert record["status"] == "ok" and record["resumed_from"].startswith("checkpoint-")
    assert int(record["resumed_from"].split("-")[1]) >= 5
    assert not (run_dir / "checkpoints").exists()


def test_resume_skips_a_checkpoint_the_kill_left_half_written(tmp_path: Path) -> None:
    from harness.training import last_checkpoint

    folder = tmp_path / "checkpoints"
    for step, state in [(5, '{"global_step": 5}'), (10, None), (15, '{"global_st')]:
        (folder / f"checkpoint-{step}").mkdir(parents=True)
        (folder / f"checkpoint-{step}" / "adapter_model.safetensors").write_bytes(b"x")
        if state is not None:
            (folder / f"checkpoint-{step}" / "trainer_state.json").write_text(state)
    (folder / "checkpoint-notes").mkdir()
    # looking while a run is alive removes nothing: the newest folder may be the one Trainer is writing
    assert last_checkpoint(folder, remove_incomplete=False) == str(folder / "checkpoint-5")
    assert len(list(folder.iterdir())) == 4
    assert last_checkpoint(folder) == str(folder / "checkpoint-5")
    assert sorted(p.name for p in folder.iterdir()) == ["checkpoint-5", "checkpoint-notes"]
    assert last_checkpoint(tmp_path / "absent") is None


def test_run_folder_holding_another_configs_result_is_refused(tmp_path: Path) -> None:
    args = [*TINY_ARGS, f"paths.runs={tmp_path}"]
    folder = tmp_path / run_id(compose(args))
    folder.mkdir(parents=True)
    (folder / "result.json").write_text(json.dumps({"status": "ok", "config_hash": "deadbeef"}))
    proc = run_cli(args)
    assert proc.returncode == 2 and "holds the result of another config" in proc.stderr
    assert json.loads((folder / "result.json").read_text())["config_hash"] == "deadbeef", "never overwritten"


def test_unreachable_hub_model_fails_fast_in_one_line(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if k != "HF_HUB_OFFLINE"}
    start = time.time()
    proc = subprocess.run([sys.executable, "-m", "harness.run", "model=qwen2.5-0.5b", "tracking=none",
                           f"paths.runs={tmp_path}"], cwd=REPO, capture_output=True, text=True, env=env, timeout=120)
    assert proc.returncode == 2 and proc.stderr.strip().count("\n") == 0
    assert "is not reachable" in proc.stderr and "model=smollm2-135m" in proc.stderr
    assert time.time() - start < 30
