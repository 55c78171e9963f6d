"""Fine-tuning methods as thin mappings onto peft: target resolution, adapter insertion, parameter counts.

A method file (conf/method/*.yaml) names a peft type and the keyword arguments its config takes; `r`, `alpha`
and the resolved target modules are filled in here. `full` (peft_type null) trains every weight. Optional keys
of a method file, each read here (or in the module named with it) or in harness.config:

- `has_rank` / `has_alpha`: whether `r` / `alpha` apply (otherwise recorded as null, so runs dedupe);
- `uses_targets: false`: prompt-learning methods that add no module adapters (`targets` recorded as null);
- `model_kinds`: the model kinds the method supports (prefix tuning: causal LMs only);
- `quantization`: transformers `BitsAndBytesConfig` keywords; the base loads quantised (QLoRA; harness/quantization.py);
- `feedforward`: per-family module names IA3 treats as feed-forward (scaled at their input);
- `init_r_factor`, `schedule`: AdaLoRA's initial rank (times `r`); `schedule.tinit` / `schedule.end`, the fractions
  of max_steps where budgeting starts and where the pruning is done (the rank pattern fixed for the steps after;
  harness/adalora.py).
- `resumable: false`: a checkpoint cannot restart the run where it stopped (AdaLoRA): no checkpoints are written,
  a re-run starts from step 0, and successive halving (which pauses runs at rungs) runs its rates to the end
  (harness.config.resumable).
"""

from __future__ import annotations

import json
import math
import shutil
import tempfile
import weakref
from functools import partial
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import peft
import torch
from torch import nn
from transformers import PreTrainedModel, TrainerCallback

from harness.adalora import AdaLoraAllocator, adalora_schedule
from harness.errors import ConfigError
from harness.models import HEAD_NAMES
from harness.quantization import is_quantized

# Module names are shared within an architecture family; the targets files speak per family.
FAMILIES = {
    "llama": "llama", "mistral": "llama", "qwen2": "llama", "qwen3": "llama", "gemma": "llama",
    "gemma2": "llama", "gemma3_text": "llama", "olmo2": "llama", "smollm3": "llama",
    "bert": "bert", "roberta": "bert", "xlm-roberta": "bert",
}
# peft's keyword names for the rank and the scaling numerator, per peft type (None: the method has no alpha).
RANK_KWARGS: dict[str, tuple[str, str | None]] = {
    "LORA": ("r", "lora_alpha"), "ADALORA": ("target_r", "lora_alpha"), "LOHA": ("r", "alpha"),
    "LOKR": ("r", "alpha"), "VERA": ("r", None),
}


def model_family(model: PreTrainedModel) -> str:
    model_type = model.config.model_type
    if model_type not in FAMILIES:
        raise ConfigError(
            f"no target-module names for model type '{model_type}'; add it to FAMILIES in harness/methods.py"
        )
    return FAMILIES[model_type]


def _is_linear(module: nn.Module) -> bool:
    # bitsandbytes' Linear4bit / Linear8bitLt subclass nn.Linear, so quantised bases resolve the same way.
    return isinstance(module, nn.Linear)


def _matches(name: str, suffixes: list[str]) -> bool:
    """Module-name suffix match on whole components: `output.dense` matches `...layer.0.output.dense`."""
    return any(name == s or name.endswith("." + s) for s in suffixes)


def resolve_targets(model: PreTrainedModel, targets_cfg: Any) -> list[str]:
    """Full names of the linear modules a targets group selects (suffix match), never embeddings or heads."""
    family = model_family(model)
    rule = targets_cfg.get(family) if targets_cfg is not None else None
    if rule is None:
        raise ConfigError(f"targets={targets_cfg.name} has no module names for the {family} family")
    include = list(rule.get("include", []))
    exclude = list(rule.get("exclude", []) or [])
    head_names = {name for name, _ in _head_modules(model)}
    names = [
        name for name, module in model.named_modules()
        if _is_linear(module) and _matches(name, include) and not _matches(name, exclude) and name not in head_names
    ]
    if not names:
        raise ConfigError(
            f"targets={targets_cfg.name} matches no module of {model.config.model_type} "
            f"(looked for {', '.join(include)}); choose another targets group"
        )
    return names


def _head_modules(model: PreTrainedModel) -> list[tuple[str, nn.Module]]:
    heads = []
    output = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    for name, module in model.named_modules():
        if module is output or name.split(".")[-1] in HEAD_NAMES:
            heads.append((name, module))
    return heads


def check_rank(model: PreTrainedModel, target_names: list[str], r: int, factor: float = 1.0) -> None:
    """A rank above a target's smaller dimension is no low-rank update (and some methods crash on it).
    `factor`: the method starts at rank ceil(factor * r) (AdaLoRA's initial rank)."""
    modules = dict(model.named_modules())
    rank = math.ceil(factor * r)
    for name in target_names:
        shape = (modules[name].out_features, modules[name].in_features)
        smallest = min(shape)
        if rank > smallest:
            start = f" (initial rank {rank})" if rank != r else ""
            raise ConfigError(
                f"r={r}{start} exceeds the smaller dimension ({smallest}) of target {name} {shape}; "
                f"choose r <= {math.floor(smallest / factor)}"
            )


def peft_task_type(model_kind: str) -> str:
    return "CAUSAL_LM" if model_kind == "causal_lm" else "SEQ_CLS"


def build_peft_config(
    eff: dict[str, Any], target_names: list[str] | None, model_kind: str, feedforward: list[str] | None = None
) -> peft.PeftConfig:
    """peft's own config object for the method, from the effective run config."""
    method = eff["method"]
    peft_type = method["peft_type"]
    kwargs: dict[str, Any] = {"peft_type": peft_type, "task_type": peft_task_type(model_kind)}
    kwargs.update(method.get("peft_kwargs") or {})
    if method.get("has_rank"):
        rank_key, alpha_key = RANK_KWARGS.get(peft_type, ("r", "lora_alpha"))
        kwargs[rank_key] = eff["r"]
        if alpha_key is not None:
            kwargs[alpha_key] = eff["alpha"]
    if peft_type == "ADALORA":
        kwargs.update(adalora_schedule(eff))
    if target_names is not None:
        kwargs["target_modules"] = target_names
    if feedforward is not None:
        kwargs["feedforward_modules"] = feedforward
    return peft.get_peft_config(kwargs)


def _feedforward_modules(model: PreTrainedModel, eff: dict[str, Any], target_names: list[str]) -> list[str] | None:
    """IA3 scales a feed-forward module's input, others' outputs: the targeted modules the method's `feedforward`
    rule (per family, like a targets file) names; peft requires them to be a subset of the targets."""
    rule = eff["method"].get("feedforward")
    if not rule:
        return None
    family_rule = rule.get(model_family(model)) or {}
    include, exclude = family_rule.get("include", []), family_rule.get("exclude") or []
    return [n for n in target_names if _matches(n, include) and not _matches(n, exclude)]


@dataclass
class MethodPlan:
    """What a method will do to a model, decided (and checked) before anything is trained."""

    peft_config: peft.PeftConfig | None  # None: full fine-tuning
    target_modules: list[str] | None
    initial_adapter: str | None = None  # PiSSA: the adapter as initialised, for conversion to plain LoRA on save


def plan_method(model: PreTrainedModel, eff: dict[str, Any], model_kind: str) -> MethodPlan:
    """Resolve targets and check the method against the model; raises ConfigError for a config that cannot work."""
    method = eff["method"]
    kinds = method.get("model_kinds")
    if kinds and model_kind not in kinds:
        raise ConfigError(
            f"method={method['name']} does not support {model_kind} models like {eff['model']['name']} "
            f"(supported: {', '.join(kinds)}); choose e.g. method=prompt or method=lora"
        )
    optim = str(eff["train"].get("optim", ""))
    if optim.startswith("paged_") and not torch.cuda.is_available():
        raise ConfigError(f"train.optim={optim} needs CUDA (paged optimizers); use train.optim=adamw_torch here")
    if method["peft_type"] is None:
        return MethodPlan(None, None)
    target_names, feedforward = None, None
    if eff["targets"] is not None:
        target_names = resolve_targets(model, ConfigNode(eff["targets"]))
        if method.get("has_rank"):
            check_rank(model, target_names, eff["r"], eff["method"].get("init_r_factor", 1.0))
        feedforward = _feedforward_modules(model, eff, target_names)
    return MethodPlan(build_peft_config(eff, target_names, model_kind, feedforward), target_names)


def apply_method(model: PreTrainedModel, plan: MethodPlan) -> PreTrainedModel:
    """Full FT: unfreeze everything. Otherwise peft's model (after k-bit preparation for a quantised base)."""
    if plan.peft_config is None:  # full fine-tuning
        for p in model.parameters():
            p.requires_grad_(True)
        return model
    if is_quantized(model):
        # float32 norms/embeddings, input grads; gradient checkpointing stays with train.gradient_checkpointing
        model = peft.prepare_model_for_kbit_training(model, use_gradient_checkpointing=False)
    peft_model = peft.get_peft_model(model, plan.peft_config)
    for name, param in peft_model.named_parameters():
        if ".ranknum." in name:
            # AdaLoRA's rank counter is a constant divisor, but peft 0.21 re-creates it with requires_grad=True when
            # it moves it to a bf16 base's dtype; AdamW would then train it and the reloaded adapter would differ.
            param.requires_grad_(False)
    if _mutates_base(plan.peft_config):
        plan.initial_adapter = tempfile.mkdtemp(prefix="harness-initial-adapter-")
        # removed with the model (or at exit) even when the run fails before discard_plan_files
        weakref.finalize(peft_model, shutil.rmtree, plan.initial_adapter, True)
        init = peft_model.peft_config["default"].init_lora_weights
        peft_model.peft_config["default"].init_lora_weights = True  # peft's recipe: save the init as plain LoRA
        peft_model.save_pretrained(plan.initial_adapter, save_embedding_layers=False)
        peft_model.peft_config["default"].init_lora_weights = init
    return peft_model


def _mutates_base(config: peft.PeftConfig) -> bool:
    init = getattr(config, "init_lora_weights", True)
    return isinstance(init, str) and init.lower().startswith(("pissa", "olora", "corda"))


def save_trained(model: nn.Module, plan: MethodPlan, folder: Path) -> None:
    """Save the adapter (or full model) so that `load_trained` reproduces the evaluated model's outputs.

    - PiSSA-style adapters are converted to a plain LoRA on the original base (peft's conversion).
    - AdaLoRA is saved at its initial rank, pruned singular values being zero, with the kept ranks per module in
      `adalora_ranks.json`: peft's own save cuts the pruned ranks, and the smaller matmuls round differently in
      bf16 (seen: different greedy answers from the reloaded SmolLM2 adapter).
    """
    config = getattr(model, "peft_config", {}).get("default")
    # The harness never targets or resizes embeddings, so none are saved; peft's "auto" would ask the hub whether
    # the base's config exists (a warning on every offline save) to find a resized vocabulary.
    save = partial(model.save_pretrained, save_embedding_layers=False) if config is not None else model.save_pretrained
    if config is not None and config.peft_type == peft.PeftType.ADALORA and config.rank_pattern:
        pattern, config.rank_pattern = config.rank_pattern, None
        try:
            save(folder)
        finally:
            config.rank_pattern = pattern
        ranks = {name: int(sum(bool(k) for k in kept)) for name, kept in pattern.items()}
        (Path(folder) / "adalora_ranks.json").write_text(json.dumps(ranks, indent=1) + "\n")
        return
    if plan.initial_adapter is None:
        save(folder)
        return
    save(folder, path_initial_model_for_weight_conversion=plan.initial_adapter)
    # peft's conversion keeps only lora_A / lora_B: put back the rest (a trained head from modules_to_save)
    from peft.utils import get_peft_model_state_dict
    from safetensors.torch import load_file, save_file

    rest = {k: v.detach().contiguous() for k, v in get_peft_model_state_dict(model).items()
            if "lora_A" not in k and "lora_B" not in k}
    if rest:
        weights = Path(folder) / "adapter_model.safetensors"
        save_file(load_file(weights) | rest, weights, metadata={"format": "pt"})


def discard_plan_files(plan: MethodPlan) -> None:
    if plan.initial_adapter:
        shutil.rmtree(plan.initial_adapter, ignore_errors=True)


def load_trained(base: PreTrainedModel, folder: Path) -> nn.Module:
    """A saved adapter on a freshly loaded base (quantised bases get the same k-bit preparation as in training)."""
    if is_quantized(base):
        base = peft.prepare_model_for_kbit_training(base, use_gradient_checkpointing=False)
    return peft.PeftModel.from_pretrained(base, str(folder))


def method_callbacks(model: nn.Module, plan: MethodPlan) -> list[TrainerCallback]:
    """Trainer callbacks a method needs during training."""
    if plan.peft_config is not None and plan.peft_config.peft_type == peft.PeftType.ADALORA:
        return [AdaLoraAllocator(model)]
    return []


def freeze_head(model: nn.Module) -> list[str]:
    """Freeze an encoder's classification head (and peft's trainable copy of it, `modules_to_save`), so that only
    the body can fit the labels (task.freeze_head; the memorize task's capacity measure). Returns the frozen names."""
    frozen = []
    for name, param in model.named_parameters():
        if param.requires_grad and any(part in HEAD_NAMES for part in name.split(".")):
            param.requires_grad_(False)
            frozen.append(name)
    return frozen


def count_parameters(model: nn.Module) -> tuple[int, int]:
    """(total, trainable); peft's count for peft models (it unpacks 4-bit weights), else plain numel."""
    if isinstance(model, peft.PeftModel):
        trainable, total = model.get_nb_trainable_parameters()
        return int(total), int(trainable)
    total = sum(p.numel() for p in model.parameters())
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    return total, trainable


class ConfigNode(dict):
    """A plain dict that answers `.name` and `.get`, so resolved configs and DictConfigs read alike."""

    def __getattr__(self, key: str) -> Any:
        return self[key]
