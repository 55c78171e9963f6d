"""Causal-LM batches for training, and the model checks that decide which batch speed-ups apply.

`CausalBatches` wraps the collator `harness.training.build_trainer` picks (cache off, logits only where a label
is), `BatchShapes` records what each batch held for the run's token counts and activation-memory shape, and the
checks below read a model's forward signature and loss so that a speed-up is used only where it is exact.
"""

from __future__ import annotations

import inspect
from typing import Any

import peft
import torch


class CausalBatches:
    """Wraps a causal-LM collator for training.

    - `use_cache=False`: transformers 5 fills `use_cache` from the config (True) even in training, builds a KV
      cache nobody reads, and, with a cache present, skips the packed-sequence detection, so a flattened batch
      would attend across examples (seen: 16% gradient error on a tiny Llama). Off, both are fixed.
    - `labelled_only`: `logits_to_keep` marks the positions whose next token has a label and `shift_labels` holds
      those labels, so the model projects and scores only there (ForCausalLMLoss uses `shift_labels` as given;
      Trainer counts `num_items_in_batch` from it).
    """

    def __init__(self, collator, labelled_only: bool) -> None:
        self.collator = collator
        self.labelled_only = labelled_only

    def __call__(self, features: list[dict[str, Any]]) -> dict[str, Any]:
        batch = self.collator(features)
        batch["use_cache"] = False
        if self.labelled_only:
            shifted = torch.nn.functional.pad(batch["labels"], (0, 1), value=-100)[..., 1:]
            keep = shifted != -100
            batch["logits_to_keep"] = keep
            batch["shift_labels"] = shifted[keep]
        return batch


class BatchShapes:
    """Passes batches through and remembers each one's examples, non-padding tokens and shape. `trained(n)` sums
    the first n batches, the ones the optimizer steps consumed: accelerate's dataloader collates one batch ahead
    (to know where the data ends), so counting at collation would add a batch the run never trained on. The
    largest trained micro-batch's shape sets the activation memory: `tokens` (positions the layers compute,
    padding included), `rows`, `longest_row` (a flattened batch's longest example, from its position ids),
    `logit_positions` (positions the output head projects), and whether the batch was `flattened`."""

    def __init__(self, collator) -> None:
        self.collator = collator
        self.batches: list[dict[str, Any]] = []  # collated in this process (since the start, or a resume)

    def __call__(self, features: list[dict[str, Any]]) -> dict[str, Any]:
        batch = self.collator(features)
        ids = batch["input_ids"]
        flat = ids.shape[0] == 1 and "position_ids" in batch and len(features) > 1
        rows, longest = (len(features), int(batch["position_ids"].max()) + 1) if flat else tuple(ids.shape)
        keep = batch.get("logits_to_keep")
        logits = int(keep.sum()) if torch.is_tensor(keep) and keep.dtype == torch.bool else ids.numel()
        mask = batch.get("attention_mask")
        self.batches.append({"examples": len(features),
                             "non_padding": int(mask.sum()) if torch.is_tensor(mask) else ids.numel(),
                             "shape": {"tokens": ids.numel(), "rows": rows, "longest_row": longest,
                                       "logit_positions": logits, "flattened": flat}})
        return batch

    def trained(self, n: int | None = None) -> dict[str, Any]:
        """examples, non-padding tokens and the largest shape of the first n batches (all collated: None)."""
        done = self.batches[:n] if n is not None else self.batches
        return {"examples": sum(b["examples"] for b in done), "tokens": sum(b["non_padding"] for b in done),
                "largest": max((b["shape"] for b in done), key=lambda sh: sh["tokens"], default={})}

    @property
    def largest(self) -> dict[str, Any]:
        return self.trained()["largest"]


def base_model(model: torch.nn.Module) -> torch.nn.Module:
    return model.get_base_model() if isinstance(model, peft.PeftModel) else model


def accepts(model: torch.nn.Module, argument: str) -> bool:
    return argument in inspect.signature(base_model(model).forward).parameters


def uses_prompt_learning(model: torch.nn.Module) -> bool:
    return isinstance(model, peft.PeftModel) and model.active_peft_config.is_prompt_learning


def packs_correctly(model: torch.nn.Module) -> bool:
    """Padding-free needs restarted `position_ids` honoured as sequence boundaries: transformers' mask utilities
    do that for causal decoders with SDPA / eager / flash attention when no cache is built (CausalBatches turns it
    off); prompt-learning methods add virtual tokens, so they keep padded batches."""
    attn = getattr(base_model(model).config, "_attn_implementation", None)
    return (accepts(model, "position_ids") and accepts(model, "use_cache") and not uses_prompt_learning(model)
            and attn in ("sdpa", "eager", "flash_attention_2", "flash_attention_3"))


def keeps_logits(model: torch.nn.Module) -> bool:
    from transformers.loss.loss_utils import ForCausalLMLoss

    return accepts(model, "logits_to_keep") and getattr(base_model(model), "loss_function", None) is ForCausalLMLoss


def keeps_labelled_logits(model: torch.nn.Module) -> bool:
    """The model projects only the positions a boolean `logits_to_keep` marks and scores `shift_labels` as given
    (transformers' ForCausalLMLoss), with the cache off: what training's labelled-logits batches and the
    forgetting probe rely on. Not under prompt learning (virtual tokens shift the positions)."""
    return not uses_prompt_learning(model) and accepts(model, "use_cache") and keeps_logits(model)
