"""Gradient checkpointing with every method: the same losses as without it, fewer activations kept for backward;
prefix tuning, which peft cannot checkpoint once wrapped, is refused before any work (tests/test_cli_errors.py)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from conftest import TINY, compose, run_inprocess

METHODS = ["full", "lora", "rslora", "dora", "qlora", "adalora", "ia3", "prompt", "pissa", "loha", "lokr", "vera"]
COMMON = ["model=tiny-llama", *TINY, "train.lr=1e-2", "r=4", "targets=all-linear", "train.padding_free=false"]


def saved_activation_bytes(model, batch: dict[str, torch.Tensor]) -> int:
    """Bytes of the distinct tensors autograd keeps from one training forward for the backward pass, weights
    (which every variant keeps anyway) left out."""
    weights = {p.untyped_storage().data_ptr() for p in model.parameters()}
    seen: dict[int, int] = {}

    def pack(t: torch.Tensor):
        ptr = t.untyped_storage().data_ptr()
        if ptr not in weights:
            seen[ptr] = t.untyped_storage().nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        # one logit column as the loss: the vocabulary-wide cross-entropy (the same with or without
        # checkpointing) would otherwise dwarf the blocks' activations
        model(**batch).logits[..., 0].float().sum().backward()
    return sum(seen.values())


@pytest.mark.parametrize("method", METHODS)
def test_checkpointing_trains_the_same_and_keeps_fewer_activations(method: str, tmp_path: Path) -> None:
    precision = [] if method == "qlora" else ["train.precision=fp32"]
    plain, _ = run_inprocess([*COMMON, f"method={method}", *precision], tmp_path / "plain")
    ckpt, _ = run_inprocess([*COMMON, f"method={method}", *precision, "train.gradient_checkpointing=true"],
                            tmp_path / "ckpt")
    assert plain["status"] == ckpt["status"] == "ok", (plain.get("reason"), ckpt.get("reason"))
    a, b = [loss for _, loss in plain["loss_curve"]], [loss for _, loss in ckpt["loss_curve"]]
    assert len(a) == len(b) == 3
    assert b == pytest.approx(a, rel=2e-3 if method == "qlora" else 1e-4)  # recomputation, same numbers

    # activation memory: the model as the pipeline builds it, checkpointing switched on the way Trainer does
    from harness.assets import cache_dir
    from harness.methods import apply_method, plan_method
    from harness.models import load_model, load_tokenizer
    from harness.config import effective_config
    from harness.quantization import quantization_config

    cfg = compose([*COMMON, f"method={method}", *precision, f"paths.runs={tmp_path / 'mem'}"])
    eff = effective_config(cfg)
    tokenizer = load_tokenizer(cfg.model, cache_dir())
    ids = torch.randint(3, 100, (4, 48), generator=torch.Generator().manual_seed(0))
    batch = {"input_ids": ids, "attention_mask": torch.ones_like(ids)}

    def build(checkpointing: bool):
        model = load_model(cfg.model, cache_dir(), precision=eff["train"]["precision"], tokenizer=tokenizer,
                           quantization_config=quantization_config(eff))
        model = apply_method(model, plan_method(model, eff, "causal_lm"))
        if checkpointing:
            model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        model.train()
        return model

    kept, checkpointed = saved_activation_bytes(build(False), batch), saved_activation_bytes(build(True), batch)
    assert checkpointed < 0.8 * kept, (checkpointed, kept)
