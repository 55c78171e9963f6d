"""Fine-tuning methods as thin mappings onto peft: target resolution, adapter insertion, parameter counts.

A method file (conf/method/*.yaml) names a peft type and the keyword arguments its config takes; `r`, `alpha`
and the resolved target modules are filled in here. `full` (peft_type null) trains every weight.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import peft
import torch
from torch import nn
from transformers import PreTrainedModel

from harness.errors import ConfigError

# Module names are shared within an architecture family; the targets files speak per family.
FAMILIES = {
    "llama": "llama", "mistral": "llama", "qwen2": "llama", "qwen3": "llama", "gemma": "llama",
    "gemma2": "llama", "gemma3_text": "llama", "olmo2": "llama", "smollm3": "llama",
    "bert": "bert", "roberta": "bert", "xlm-roberta": "bert",
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


def resolve_targets(model: PreTrainedModel, targets_cfg: Any) -> list[str]:
    """Full names of the linear modules a targets group selects (suffix match), never embeddings or heads."""
    family = model_family(model)
    rule = targets_cfg.get(family) if targets_cfg is not None else None
    if rule is None:
        raise ConfigError(f"targets={targets_cfg.name} has no module names for the {family} family")
    include = list(rule.get("include", []))
    exclude = list(rule.get("exclude", []) or [])
    head_names = {name for name, _ in _head_modules(model)}

    def matches(name: str, suffixes: list[str]) -> bool:
        return any(name == s or name.endswith("." + s) for s in suffixes)

    names = [
        name for name, module in model.named_modules()
        if _is_linear(module) and matches(name, include) and not matches(name, exclude) and name not in head_names
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
        if module is output or name.split(".")[-1] in ("classifier", "score", "lm_head"):
            heads.append((name, module))
    return heads


def check_rank(model: PreTrainedModel, target_names: list[str], r: int) -> None:
    modules = dict(model.named_modules())
    for name in target_names:
        weight = modules[name].weight
        smallest = min(modules[name].in_features, modules[name].out_features)
        if r > smallest:
            raise ConfigError(
                f"r={r} exceeds the smaller dimension ({smallest}) of target {name} "
                f"({tuple(weight.shape)}); choose r <= {smallest}"
            )


def peft_task_type(model_kind: str) -> str:
    return "CAUSAL_LM" if model_kind == "causal_lm" else "SEQ_CLS"


def build_peft_config(eff: dict[str, Any], target_names: list[str] | None, model_kind: str) -> peft.PeftConfig:
    """peft's own config object for the method, from the effective run config."""
    method = eff["method"]
    kwargs: dict[str, Any] = {"peft_type": method["peft_type"], "task_type": peft_task_type(model_kind)}
    kwargs.update(method.get("peft_kwargs") or {})
    if method.get("has_rank"):
        kwargs.update(r=eff["r"], lora_alpha=eff["alpha"])
    if target_names is not None:
        kwargs["target_modules"] = target_names
    return peft.get_peft_config(kwargs)


@dataclass
class MethodPlan:
    """What a method will do to a model, decided (and checked) before anything is trained."""

    peft_config: peft.PeftConfig | None  # None: full fine-tuning
    target_modules: list[str] | None


def plan_method(model: PreTrainedModel, eff: dict[str, Any], model_kind: str) -> MethodPlan:
    """Resolve targets and check the rank against them; raises ConfigError for a config that cannot work."""
    method = eff["method"]
    if method["peft_type"] is None:
        return MethodPlan(None, None)
    target_names = None
    if eff["targets"] is not None:
        target_names = resolve_targets(model, _Node(eff["targets"]))
        if method.get("has_rank"):
            check_rank(model, target_names, eff["r"])
    return MethodPlan(build_peft_config(eff, target_names, model_kind), target_names)


def apply_method(model: PreTrainedModel, plan: MethodPlan) -> PreTrainedModel:
    if plan.peft_config is None:  # full fine-tuning
        for p in model.parameters():
            p.requires_grad_(True)
        return model
    return peft.get_peft_model(model, plan.peft_config)


def count_parameters(model: nn.Module) -> tuple[int, int]:
    """(total, trainable); peft's count for peft models (it unpacks 4-bit weights), else plain numel."""
    if isinstance(model, peft.PeftModel):
        trainable, total = model.get_nb_trainable_parameters()
        return int(total), int(trainable)
    total = sum(p.numel() for p in model.parameters())
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    return total, trainable


class _Node(dict):
    """A plain dict that answers `.name` and `.get`, so resolved configs and DictConfigs read alike."""

    def __getattr__(self, key: str) -> Any:
        return self[key]
