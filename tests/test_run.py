"""End-to-end runs on tiny models: a complete record, a saved adapter that reloads to the same answers,
W&B offline logging, and the CLI's own run folder."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from conftest import TINY, compose, run_cli, run_inprocess
from harness.results import REQUIRED_KEYS

# Keys that a finished run must fill (the rest may legitimately be null, e.g. r for full FT).
NEVER_NULL = set(REQUIRED_KEYS) - {"r", "alpha", "targets", "git_commit"}


@pytest.mark.parametrize(("model", "method"), [("tiny-llama", "lora"), ("tiny-llama", "full"), ("tiny-bert", "lora"), ("tiny-bert", "full")])
def test_tiny_run_writes_complete_result(model: str, method: str, runs: Path) -> None:
    result, run_dir = run_inprocess([f"model={model}", f"method={method}", *TINY], runs)
    on_disk = json.loads((run_dir / "result.json").read_text())
    assert on_disk["status"] == "ok"
    missing = [k for k in REQUIRED_KEYS if k not in on_disk]
    assert not missing, missing
    nulls = [k for k in NEVER_NULL if on_disk[k] is None]
    assert not nulls, nulls
    assert on_disk["mem_kind"] in ("cpu_rss", "cuda_allocated")
    assert on_disk["peak_mem_bytes"] > 10 * 2**20
    assert on_disk["train_tokens_per_s"] > 0 and on_disk["train_runtime_s"] > 0
    saved = run_dir / on_disk["saved_to"]
    assert on_disk["adapter_bytes"] == sum(f.stat().st_size for f in saved.rglob("*") if f.is_file())
    assert 0 <= on_disk["score"] <= 1 and 0 <= on_disk["base_score"] <= 1
    assert on_disk["versions"]["torch"] == torch.__version__
    if method == "full":
        assert on_disk["r"] is None and on_disk["targets"] is None
        assert on_disk["params_trainable"] == on_disk["params_total"]
        assert (saved / "model.safetensors").exists()
    else:
        assert on_disk["r"] == 16 and on_disk["alpha"] == 32 and on_disk["targets"] == "qv"
        assert 0 < on_disk["params_trainable"] < on_disk["params_total"]
        assert (saved / "adapter_model.safetensors").exists()
    assert math.isclose(on_disk["trainable_pct"], 100 * on_disk["params_trainable"] / on_disk["params_total"])
    assert len(on_disk["samples"]) == 5 and {"input", "reference", "output"} <= set(on_disk["samples"][0])


@pytest.mark.parametrize("model", ["tiny-llama", "tiny-bert"])
def test_adapter_save_reload_gives_same_eval_outputs(model: str, runs: Path) -> None:
    from peft import PeftModel

    from harness.assets import cache_dir
    from harness.models import load_model, load_tokenizer
    from harness.tasks import get_task

    overrides = [f"model={model}", "method=lora", *TINY, "train.lr=1e-2", "train.max_steps=4"]
    result, run_dir = run_inprocess(overrides, runs)
    cfg = compose(overrides + [f"paths.runs={runs}"])
    cache = cache_dir()
    task = get_task(cfg.task, cache)
    tokenizer = load_tokenizer(cfg.model, cache)
    base = load_model(cfg.model, cache, precision=cfg.train.precision, tokenizer=tokenizer, labels=task.labels)
    if model == "tiny-bert":  # the trained head is saved with the adapter (modules_to_save)
        reloaded = PeftModel.from_pretrained(base, run_dir / "adapter")
    else:
        reloaded = PeftModel.from_pretrained(base, run_dir / "adapter")
    test = task.splits()["test"]
    outputs = task.predict(reloaded, tokenizer, test, cfg.model.kind, 8, cfg.train.max_seq_len)
    assert [s["output"] for s in result["samples"]] == outputs[:5]
    assert task.score(outputs, list(test))[task.primary_metric] == result["score"]
    # and the adapter did change the model: its logits differ from the untuned base
    enc = tokenizer(["hello there"], return_tensors="pt")
    with torch.no_grad():
        tuned = reloaded(**enc).logits
        with reloaded.disable_adapter():
            untuned = reloaded(**enc).logits
    assert not torch.equal(tuned, untuned)


def test_wandb_offline_run_summary_holds_the_result_keys(runs: Path) -> None:
    overrides = ["model=tiny-llama", *[o for o in TINY if not o.startswith("tracking")], "tracking=wandb", "tracking.mode=offline"]
    result, run_dir = run_inprocess(overrides, runs)
    offline = list((run_dir / "wandb").glob("offline-run-*"))
    assert len(offline) == 1, list((run_dir / "wandb").iterdir())
    wandb_cli = Path(sys.executable).with_name("wandb")
    proc = subprocess.run([str(wandb_cli), "leet", "inspect", "--summary", "--json", str(offline[0])],
                          capture_output=True, text=True, timeout=120)
    logged = json.loads(proc.stdout)
    summary = logged["summary"]
    missing = [k for k in REQUIRED_KEYS if k not in summary]
    assert not missing, missing
    assert summary["run_id"] == result["run_id"] and summary["score"] == result["score"]
    assert logged["config"]["method"]["name"] == "lora" and logged["config"]["r"] == 16
    assert "method:lora" in logged["tags"] and "task:classify" in logged["tags"]
    assert logged["state"] == "finished"


def test_cli_run_creates_its_own_folder_and_skips_a_finished_one(tmp_path: Path) -> None:
    args = ["model=tiny-llama", *TINY, f"paths.runs={tmp_path}"]
    first = run_cli(args)
    assert first.returncode == 0, first.stderr[-2000:]
    folders = [p for p in tmp_path.iterdir() if p.is_dir()]
    assert len(folders) == 1 and folders[0].name.startswith("classify_tiny-llama_lora_r16_qv_s0_")
    assert (folders[0] / ".hydra" / "config.yaml").exists()
    assert "score      accuracy" in first.stdout
    rec = json.loads((folders[0] / "result.json").read_text())
    # the process's start-up (interpreter, imports, config) is its own field; the probe's share of final scoring
    assert 0.5 < rec["startup_s"] < 120 and 0 < rec["final_probe_s"] < rec["final_eval_s"]
    # run.log holds the run's log: what was loaded, the untuned score, every logged step, the summary
    log_text = (folders[0] / "run.log").read_text()
    for expected in ("tiny-llama loaded", "untuned model: accuracy", "step 1/3: {'loss':", "step 3/3:",
                     "tuned model: accuracy", "summary", "score      accuracy"):
        assert expected in log_text, (expected, log_text[-2000:])
    mtime = (folders[0] / "result.json").stat().st_mtime
    again = run_cli(args)
    assert again.returncode == 0 and "already done" in again.stderr + again.stdout
    assert (folders[0] / "result.json").stat().st_mtime == mtime
    other = run_cli(args + ["seed=1"])
    assert other.returncode == 0
    assert len([p for p in tmp_path.iterdir() if p.is_dir()]) == 2
