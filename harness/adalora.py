"""AdaLoRA's own arithmetic: its schedule from the method file, its parameter budget, what a run kept.

AdaLoRA starts every target at a rank above `r` (`init_r_factor`) and prunes ranks during training on a schedule
(`schedule.tinit` / `schedule.end`, fractions of max_steps), so its rank, its parameter counts and its training
callback differ from every other method's; harness/methods.py builds the peft config and the callback list from
these.
"""

from __future__ import annotations

import math
from typing import Any

import peft
from torch import nn
from transformers import TrainerCallback

from harness.errors import ConfigError


def adapter_rank(eff: dict[str, Any]) -> int:
    """The largest rank any module gets: AdaLoRA starts above its target average rank."""
    return math.ceil(eff["method"].get("init_r_factor", 1.0) * eff["r"])


def adalora_schedule(eff: dict[str, Any]) -> dict[str, int]:
    """peft's tinit / tfinal / total_step from the method's fractions of the run's max_steps.

    peft's RankAllocator keeps every rank for steps 0..tinit, shrinks the budget (cubically) from tinit to
    total_step - tfinal, fixes the rank pattern at step total_step - tfinal and trains the kept ranks for the last
    tfinal steps. `schedule.end` is the fraction of the steps by which pruning is done (tfinal = 1 - end);
    `schedule.tfinal` (the older spelling) is still read. A run too short for one budgeting step keeps every rank."""
    total = int(eff["train"]["max_steps"])
    frac = eff["method"].get("schedule") or {}
    end = frac.get("end", 1 - frac.get("tfinal", 0))
    if not 0 <= frac.get("tinit", 0) < end <= 1:
        raise ConfigError(f"method.schedule: need 0 <= tinit < end <= 1 (fractions of max_steps), got {dict(frac)}")
    tinit, tfinal = int(frac.get("tinit", 0) * total), total - int(round(end * total))
    if tinit >= total - tfinal:  # peft needs at least one budgeting step
        tinit, tfinal = 0, 0
    return {"total_step": total, "tinit": tinit, "tfinal": tfinal, "init_r": adapter_rank(eff)}


def adalora_budget(shapes: list[tuple[int, int]], init_r: int, target_r: int) -> dict[str, int]:
    """AdaLoRA's adapter parameter counts on target modules of these (out, in) shapes, before training.

    A rank is a triplet (a row of P, a singular value, a column of Q): in + out + 1 parameters. peft allocates
    init_r triplets per module and prunes to a budget of target_r * modules triplets *wherever they score
    highest*, so the final count is known only after training: `final_even` (every module at target_r, which
    equals LoRA r=target_r's count plus one value per rank) and the range the allocation can reach, from every
    kept rank in the smallest modules (`final_min`) to every one in the largest (`final_max`)."""
    sizes = sorted(out + inp + 1 for out, inp in shapes)
    budget = target_r * len(sizes)

    def fill(order: list[int]) -> int:
        left, total = budget, 0
        for size in order:
            kept = min(init_r, left)
            total, left = total + kept * size, left - kept
        return total

    return {"rank_budget": budget, "allocated": init_r * sum(sizes), "final_even": target_r * sum(sizes),
            "final_min": fill(sizes), "final_max": fill(sizes[::-1])}


def adalora_record(model: nn.Module) -> dict[str, Any] | None:
    """What an AdaLoRA run kept (result.json `adalora`, `params_effective`); None for other methods.

    `params_effective` counts the trainable parameters the final model uses: the kept triplets and everything
    else trainable (a classifier head). The pruned triplets stay allocated (`params_trainable`, what the optimizer
    held) but their singular value is masked to zero after every step from the schedule's end on, so they no
    longer change the output: the final model is the kept triplets, which is what AdaLoRA's paper compares at."""
    config = getattr(model, "peft_config", {}).get("default")
    if config is None or config.peft_type != peft.PeftType.ADALORA:
        return None
    pattern = config.rank_pattern or {}
    params = dict(model.base_model.model.named_parameters())  # the names the rank allocator keys its pattern by
    kept_total, allocated_total, effective = 0, 0, 0
    for name, value in params.items():
        if ".lora_E." in name:
            size = params[name.replace("lora_E", "lora_A")].shape[1] + params[name.replace("lora_E", "lora_B")].shape[0] + 1
            kept = int(sum(bool(k) for k in pattern[name])) if name in pattern else value.shape[0]
            kept_total, allocated_total, effective = kept_total + kept, allocated_total + value.shape[0], effective + kept * size
        elif value.requires_grad and ".lora_A." not in name and ".lora_B." not in name:
            effective += value.numel()
    return {"params_effective": effective, "adalora": {
        "init_r": config.init_r, "target_r": config.target_r, "total_step": config.total_step, "tinit": config.tinit,
        "tfinal": config.tfinal, "schedule_end_step": config.total_step - config.tfinal,
        "ranks_allocated": allocated_total, "ranks_kept": kept_total, "pruned": bool(pattern)}}


class AdaLoraAllocator(TrainerCallback):
    """AdaLoRA's budget step: `update_and_allocate` after every optimizer step, while gradients still exist.

    Trainer calls on_optimizer_step after `optimizer.step()` and before `model.zero_grad()`; `global_step` there
    counts the steps finished before this one, the 0-based step index peft's schedule expects."""

    def __init__(self, model: peft.PeftModel) -> None:
        self.model = model

    def on_optimizer_step(self, args, state, control, **kwargs):
        self.model.base_model.update_and_allocate(state.global_step)
