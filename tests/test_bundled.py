"""The bundled pretrained models end to end (slow: minutes). `make test` runs these; `make test-fast` skips them."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from conftest import run_cli

pytestmark = pytest.mark.slow
SHORT = ["tracking=none", "task.n_train=96", "task.n_eval=48", "train.logging_steps=5"]


def test_smollm2_lora_run_is_complete_and_learns(tmp_path: Path) -> None:
    proc = run_cli(["model=smollm2-135m", "method=lora", "r=16", "targets=qv", "train.max_steps=12", *SHORT,
                    f"paths.runs={tmp_path}"], timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    [record_file] = list(tmp_path.glob("*/result.json"))
    result = json.loads(record_file.read_text())
    assert result["status"] == "ok"
    # closed form: 30 layers x r x ((576 + 576) for q_proj + (576 + 192) for v_proj)
    assert result["params_trainable"] == 30 * 16 * ((576 + 576) + (576 + 192)) == 921_600
    assert result["params_total"] == 134_515_008 + 921_600
    assert result["adapter_bytes"] > 921_600 * 4  # float32 adapter weights
    assert result["mem_kind"] == "cpu_rss" and 0.3e9 < result["peak_mem_bytes"] < 12e9
    first_loss, last_loss = result["loss_curve"][0][1], result["loss_curve"][-1][1]
    assert last_loss < first_loss, result["loss_curve"]
    assert "score      accuracy" in proc.stdout
    # the adapter loads without the harness (README: "Load an adapter without the harness"), naming the hub base
    adapter = record_file.parent / "adapter"
    assert json.loads((adapter / "adapter_config.json").read_text())["base_model_name_or_path"] == \
        "HuggingFaceTB/SmolLM2-135M-Instruct" == result["base_model"]["hub_id"]
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    local = result["base_model"]["local_path"]  # the converted bundled weights (the hub id's model, offline)
    tokenizer = AutoTokenizer.from_pretrained(local)
    from harness.models import WEIGHT_DTYPES

    # the precision the run computed in: auto is fp32 on a CPU without native bf16
    base = AutoModelForCausalLM.from_pretrained(local, dtype=WEIGHT_DTYPES[result["precision"]])
    inputs = tokenizer(["Classify the sentiment: I love this!"], return_tensors="pt")
    with torch.no_grad():
        plain = base(**inputs).logits
        tuned = PeftModel.from_pretrained(base, str(adapter))(**inputs).logits
    assert not torch.allclose(plain, tuned)  # the adapter is applied, not silently dropped
    from harness.runfolder import open_run
    from harness.methods import load_trained

    run = open_run(record_file.parent, finished=True)
    with torch.no_grad():
        harness_logits = load_trained(run.load_base()[0], adapter)(**inputs).logits
    torch.testing.assert_close(tuned, harness_logits)  # the same model the harness evaluated


def test_minilm_full_finetuning_run_is_complete(tmp_path: Path) -> None:
    proc = run_cli(["model=minilm-l6", "method=full", "task=classify", "seed=1", "train.max_steps=20",
                    "train.lr=1e-4", *SHORT, f"paths.runs={tmp_path}"], timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    [record_file] = list(tmp_path.glob("*/result.json"))
    result = json.loads(record_file.read_text())
    assert result["status"] == "ok" and result["r"] is None and result["targets"] is None
    assert result["params_trainable"] == result["params_total"] > 22_000_000
    assert (record_file.parent / "model" / "model.safetensors").exists()
    assert result["run_id"].startswith("classify_minilm-l6_full_s1_")
