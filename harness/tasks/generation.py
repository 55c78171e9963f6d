"""Batched greedy answering for causal LMs, shared by every task's `answers` and `choice_logprobs`.

Left-padded batches, a prompt beginning every row shares run once and its attention cache reused
(`shared_prefix`, `prefix_cache`), `generate` with the KV cache stopping at EOS (`generate_greedy`), and the
single forward passes that score multiple-choice answers (`choice_inputs`, `last_position_logprobs`). Kept apart
from harness/tasks/base.py, which says what a task asks and how it is scored, as these only decide how a model is
run over token ids; their outputs equal the one-prompt-at-a-time answers (tests/test_scoring.py).
"""

from __future__ import annotations

import copy
import inspect
import os
from contextlib import contextmanager
from typing import Any

import torch
from transformers import GenerationMixin


MIN_SHARED_PREFIX = 8  # shorter common beginnings are not worth a separate forward pass


def shared_prefix(model, prompts: list[list[int]]) -> list[int]:
    """The tokens every prompt begins with, leaving each at least one token of its own (the position whose
    logits start the answer); [] when too short to pay off, or when the method itself feeds the attention cache
    (prefix / prompt tuning: peft prepends its virtual tokens through the same cache)."""
    if is_prompt_learning(model) or not prompts:
        return []
    prefix = os.path.commonprefix(prompts)[:min(map(len, prompts)) - 1]
    return list(prefix) if len(prefix) >= MIN_SHARED_PREFIX else []


def generate_greedy(model, tokenizer, prompts: list[list[int]], device, max_new_tokens: int,
                    prefix: list[int] | None = None, cache=None) -> list[str]:
    """One batch through `model.generate`: greedy, KV cache on, stopping at EOS (inputs: `generation_inputs`)."""
    inputs = generation_inputs(prompts, tokenizer.pad_token_id, device, model, prefix, cache)
    width = inputs["input_ids"].shape[1]
    with contiguous_head_input(model):
        generated = model.generate(
            **inputs, max_new_tokens=max_new_tokens, do_sample=False,
            use_cache=True, pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id,
        )
    return [tokenizer.decode(g[width:], skip_special_tokens=True).strip() for g in generated]


def generation_inputs(prompts: list[list[int]], pad: int, device, model=None, prefix: list[int] | None = None,
                      cache=None) -> dict[str, Any]:
    """`generate`'s inputs for one batch. Without `prefix` the prompts are left-padded. With it (a beginning
    every prompt shares, and optionally `cache`, its `prefix_cache`) each sequence starts from a copy of the
    prefix's keys and values and only the rest of each prompt is run, padded between the shared part and its
    own: the attention mask hides the padding, and generate's position ids (the mask's running count) give every
    token the position it has in the unpadded prompt."""
    if not prefix:
        return {k: v.to(device) for k, v in left_padded(prompts, pad).items()}
    cache = copy.deepcopy(cache if cache is not None else prefix_cache(model, prefix, device))
    cache.batch_repeat_interleave(len(prompts))  # generate extends its copy in place
    rest = left_padded([p[len(prefix):] for p in prompts], pad)
    inputs = {"input_ids": torch.cat([torch.tensor([prefix] * len(prompts)), rest["input_ids"]], dim=1),
              "attention_mask": torch.cat([torch.ones(len(prompts), len(prefix), dtype=torch.long),
                                           rest["attention_mask"]], dim=1)}
    return {k: v.to(device) for k, v in inputs.items()} | {CACHE_KWARG: cache}


# transformers renamed generate's `past_key_values` to `cache` (the old name warns until its removal in 5.40)
CACHE_KWARG = "cache" if "cache" in inspect.signature(GenerationMixin.prepare_inputs_for_generation).parameters \
    else "past_key_values"


def prefix_cache(model, prefix: list[int], device):
    """The attention cache (keys and values of every layer) of `prefix` as one sequence."""
    with torch.no_grad():
        out = model(input_ids=torch.tensor([prefix], device=device), use_cache=True, logits_to_keep=1)
    return out["cache"] if "cache" in out else out.past_key_values  # renamed in transformers 5.x


def left_padded(prompts: list[list[int]], pad: int) -> dict[str, torch.Tensor]:
    """Token-id prompts as one batch padded on the left (what generation continues from): input_ids and
    attention_mask."""
    width = max(len(p) for p in prompts)
    return {"input_ids": torch.tensor([[pad] * (width - len(p)) + p for p in prompts]),
            "attention_mask": torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in prompts])}


def choice_inputs(prompts: list[list[int]], choices: list[list[int]]
                  ) -> tuple[list[list[int]], list[list[tuple[int, int]]]]:
    """The distinct forward inputs that score every (prompt, choice) pair: the prompt followed by the choice's
    tokens but its last (the model's outputs at the last len(choice) positions predict the choice's tokens), and
    for each input the (prompt index, choice index) pairs it scores. Choices of one token share one input."""
    inputs: list[list[int]] = []
    scored: list[list[tuple[int, int]]] = []
    for row, prompt in enumerate(prompts):
        seen: dict[tuple[int, ...], int] = {}
        for k, choice in enumerate(choices):
            ids = tuple(prompt + choice[:-1])
            if ids not in seen:
                seen[ids] = len(inputs)
                inputs.append(list(ids))
                scored.append([])
            scored[seen[ids]].append((row, k))
    return inputs, scored


def last_position_logprobs(model, inputs: list[list[int]], pad: int, device, last: int,
                           prefix: list[int] | None = None, cache=None) -> torch.Tensor:
    """Log-probabilities of the next token at each input's `last` final positions (batch x last x vocab), from
    one forward pass over the batch laid out as `generation_inputs` lays it out for generate (left padding, the
    shared `prefix` from a copy of its `cache`); position ids are the attention mask's running count, as generate
    gives them, so a padded input scores as it would alone."""
    batch = generation_inputs(inputs, pad, device, model, prefix, cache)
    mask = batch["attention_mask"]
    positions = (mask.cumsum(-1) - 1).clamp(min=0)
    done = len(prefix) if prefix else 0  # tokens the cache already holds
    kwargs = {CACHE_KWARG: batch[CACHE_KWARG]} if prefix else {}
    if not is_prompt_learning(model):  # peft's prompt learning prepends virtual tokens and sets positions itself
        kwargs["position_ids"] = positions[:, done:]
    logits = model(input_ids=batch["input_ids"][:, done:], attention_mask=mask, logits_to_keep=last,
                   use_cache=bool(prefix), **kwargs).logits
    return torch.log_softmax(logits[:, -last:].float(), dim=-1).cpu()


def is_prompt_learning(model) -> bool:
    """Whether `model` is a peft prompt-learning model (prefix / prompt tuning), which feeds the cache itself."""
    peft_config = getattr(model, "active_peft_config", None)
    return peft_config is not None and bool(getattr(peft_config, "is_prompt_learning", False))


@contextmanager
def contiguous_head_input(model):
    """Hand the output head a contiguous input while generating.

    At prefill, generate asks for the last position's logits only (`logits_to_keep=1`), so the head receives the
    strided view `hidden[:, -1:, :]`. torch.matmul cannot fold a view like that into one matrix product: it
    expands the head's weight to the batch (a copy of vocab x hidden per sequence) and runs a batched product.
    On this CPU that copy took two thirds of scoring time (classify on smollm2-135m, batch 32: 57 s -> 19 s for
    150 answers with the copy avoided; the answers are identical, tests/test_scoring.py)."""
    head = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    if head is None:
        yield
        return
    handle = head.register_forward_pre_hook(_contiguous_first_input)
    try:
        yield
    finally:
        handle.remove()


def _contiguous_first_input(module, args):
    return (args[0].contiguous(), *args[1:]) if args and isinstance(args[0], torch.Tensor) else None
