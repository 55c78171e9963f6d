"""The model on the meta device: built from its config (hub presets carry theirs as `hf_config:` in conf/model/,
so no network is needed) as harness.models.load_model builds it, then the method applied with the harness's own
`plan_method` / `apply_method`, so trainable counts are peft's. Shapes and dtypes only, no storage.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from omegaconf import OmegaConf
from torch import nn

from harness.errors import ConfigError
from harness.estimate.model_weights import quantized_weights


def hf_config(model_cfg: dict[str, Any], cache: Path | None = None):
    """The transformers config of a model preset: `hf_config` in its yaml, a tiny model's `architecture`, a bundled
    model's local config.json, or a hub preset's locally cached config; model=hf: its folder's config.json (or the
    hub id's, cached)."""
    from transformers import AutoConfig

    if model_cfg.get("hf_config"):
        return AutoConfig.for_model(**dict(model_cfg["hf_config"]))
    if model_cfg.get("source") == "hf":
        from harness.hf_model import read_config

        return read_config(model_cfg["path"])
    if model_cfg.get("source") == "tiny":
        from harness.assets import cache_dir
        from harness.models import load_tokenizer

        tokenizer = load_tokenizer(OmegaConf.create(model_cfg), cache or cache_dir())
        return AutoConfig.for_model(vocab_size=len(tokenizer), pad_token_id=tokenizer.pad_token_id,
                                    **dict(model_cfg["architecture"]))
    if model_cfg.get("source") == "bundled":
        from harness.assets import bundled_model_dir, cache_dir

        return AutoConfig.from_pretrained(bundled_model_dir(OmegaConf.create(model_cfg), cache or cache_dir()))
    try:
        return AutoConfig.from_pretrained(model_cfg["hub_id"])
    except OSError:
        raise ConfigError(
            f"model '{model_cfg['name']}' has no `hf_config:` in conf/model/{model_cfg['name']}.yaml and its config is "
            f"not in the local HF cache; copy the values of its config.json there"
        ) from None


def task_labels(task_cfg: dict[str, Any], cache: Path | None = None) -> list[str] | None:
    """The task's classes (the head's size): the builtin set, or read from the user's training rows."""
    from harness.assets import cache_dir
    from harness.tasks import get_task

    return get_task(OmegaConf.create(task_cfg), cache or cache_dir()).labels


def build_meta_model(eff: dict[str, Any], cache: Path | None = None) -> nn.Module:
    """The model as harness.models.load_model builds it (dtype from the precision; a fresh classification head
    for encoders), on the meta device: shapes and dtypes, no storage."""
    from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification

    from harness.models import WEIGHT_DTYPES

    model_cfg = eff["model"]
    config = hf_config(model_cfg, cache)
    dtype = WEIGHT_DTYPES[eff["train"]["precision"]]
    quant = eff["method"].get("quantization") or {}
    if quant:  # bitsandbytes: unquantised parts load in the compute dtype
        dtype = getattr(torch, str(quant.get("bnb_4bit_compute_dtype", "bfloat16")).removeprefix("torch."))
    if model_cfg["kind"] == "encoder":
        labels = task_labels(eff["task"], cache) or ["0", "1"]
        config.num_labels = len(labels)
        config.id2label = dict(enumerate(labels))
        config.label2id = {label: i for i, label in enumerate(labels)}
        auto = AutoModelForSequenceClassification
    else:
        auto = AutoModelForCausalLM
    with torch.device("meta"):
        return auto.from_config(config, dtype=dtype)


def prepare_model(eff: dict[str, Any], cache: Path | None = None) -> tuple[nn.Module, dict[int, int], Any]:
    """Meta model with the method applied through harness.methods (peft on the meta device)."""
    from harness.methods import apply_method, plan_method

    model = build_meta_model(eff, cache)
    quant = eff["method"].get("quantization") or {}
    qbytes = quantized_weights(model, quant) if quant else {}
    if quant:  # what peft.prepare_model_for_kbit_training (harness.methods.apply_method) does to the rest
        for p in model.parameters():
            p.requires_grad_(False)
            if id(p) not in qbytes and p.dtype in (torch.float16, torch.bfloat16):
                p.data = p.data.to(torch.float32)
    kwargs = dict(eff["method"].get("peft_kwargs") or {})
    if isinstance(kwargs.get("init_lora_weights"), str):
        # data-dependent inits (PiSSA, OLoRA, ...) need real weights; shapes and counts are those of the plain init
        eff = {**eff, "method": {**eff["method"], "peft_kwargs": {**kwargs, "init_lora_weights": True}}}
    # the optimizer changes nothing in the plan, and a paged (CUDA-only) one must not stop a CPU-side estimate
    plan = plan_method(model, {**eff, "train": {**eff["train"], "optim": "adamw_torch"}}, eff["model"]["kind"])
    try:
        return apply_method(model, plan), qbytes, plan
    except (RuntimeError, ValueError, TypeError, NotImplementedError) as err:
        raise ConfigError(f"method={eff['method']['name']} cannot be applied on the meta device: "
                          f"{str(err).splitlines()[0][:200]}") from None
