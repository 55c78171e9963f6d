"""Attention for flattened (padding-free) training batches: each packed example attended on its own row.

transformers runs a flattened batch through SDPA with one dense block-diagonal mask over the whole row; while
training, `packed_attention` (registered with transformers as `PACKED_ATTENTION`, switched on by the
`PackedAttention` callback that `harness.training.build_trainer` adds) lays the row out as one padded example per
row instead. The memory estimator (harness/estimate/model.py) asks `packed_rows_run_eager` which path it takes.
"""

from __future__ import annotations

import contextlib

import torch
from transformers import AttentionInterface, TrainerCallback
from transformers.integrations.sdpa_attention import sdpa_attention_forward
from transformers.masking_utils import AttentionMaskInterface, sdpa_mask
from transformers.models.llama.modeling_llama import eager_attention_forward

from harness.training_batches import base_model

PACKED_ATTENTION = "harness_packed"
# Attention modules whose computation is transformers' plain (GQA) scaled dot-product one, so the Llama eager
# function computes it exactly; others keep transformers' own (dense-mask) handling of packed rows.
PLAIN_ATTENTION_TYPES = ("llama", "mistral", "qwen2", "qwen3")
# On a CPU, matmul + softmax beat SDPA's flash kernel on short rows (here, fwd+bwd per layer at 8 x 97 tokens:
# 4.6 ms against 16 ms; at 8 x 256: 45 ms against 36 ms), so short rows take the eager path.
EAGER_MAX_LEN = 192


def packed_rows_run_eager(device_type: str, longest_row: int) -> bool:
    """Whether packed_attention takes the eager path for rows this long on this device."""
    return device_type == "cpu" and longest_row <= EAGER_MAX_LEN


def packed_attention(module, query, key, value, attention_mask, position_ids=None, **kwargs):
    """Attention of a flattened batch (`[1, heads, n, d]`, examples delimited by restarting `position_ids`)
    computed per example: scattered into `[examples, heads, longest, d]`, causal attention, gathered back. Exactly
    what each example gets alone; anything else (one sequence, a cache, sliding windows, soft-capping) goes to
    transformers' SDPA function with the mask transformers built."""
    n = query.shape[2]
    pos = None if position_ids is None else position_ids.reshape(-1)
    plain = not any(kwargs.get(k) is not None for k in ("sliding_window", "softcap", "s_aux"))
    starts = None
    if plain and query.shape[0] == 1 and key.shape[2] == n > 1 and pos is not None and pos.numel() == n:
        starts = torch.nonzero(torch.diff(pos) != 1).flatten() + 1
    if starts is None or starts.numel() == 0:
        return sdpa_attention_forward(module, query, key, value, attention_mask, position_ids=position_ids, **kwargs)
    bounds = torch.cat([starts.new_zeros(1), starts, starts.new_full((1,), n)])
    lengths = torch.diff(bounds)
    rows, width = len(lengths), int(lengths.max())
    example = torch.repeat_interleave(torch.arange(rows, device=starts.device), lengths)
    slot = example * width + torch.arange(n, device=starts.device) - bounds[example]  # token -> (row, column)

    def to_rows(x: torch.Tensor) -> torch.Tensor:
        heads, dim = x.shape[1], x.shape[3]
        out = x.new_zeros(rows * width, heads, dim).index_copy(0, slot, x[0].transpose(0, 1))
        return out.view(rows, width, heads, dim).transpose(1, 2)

    kwargs.pop("is_causal", None)
    q, k, v = to_rows(query), to_rows(key), to_rows(value)
    if packed_rows_run_eager(query.device.type, width):
        # right padding: a real token's causal window never reaches a pad; pad rows are computed and dropped
        causal = torch.full((width, width), torch.finfo(q.dtype).min, dtype=q.dtype, device=q.device).triu(1)
        out, _ = eager_attention_forward(module, q, k, v, causal[None, None], **kwargs)
    else:
        out, _ = sdpa_attention_forward(module, q, k, v, None, is_causal=True, **kwargs)
    return out.reshape(rows * width, *out.shape[2:]).index_select(0, slot).unsqueeze(0), None


AttentionInterface.register(PACKED_ATTENTION, packed_attention)
AttentionMaskInterface.register(PACKED_ATTENTION, sdpa_mask)  # for the fallback; packed rows ignore the mask


class PackedAttention(TrainerCallback):
    """Switches the model to `packed_attention` for training only (evaluation and generation keep SDPA)."""

    def __init__(self, model: torch.nn.Module) -> None:
        self.model, self.previous = base_model(model), None

    def on_train_begin(self, args, state, control, **kwargs):
        self.previous = self.model.config._attn_implementation
        self.model.set_attn_implementation(PACKED_ATTENTION)

    def on_train_end(self, args, state, control, **kwargs):
        if self.previous is not None:
            self.model.set_attn_implementation(self.previous)


@contextlib.contextmanager
def evaluation_attention(model: torch.nn.Module):
    """Generation inside training (periodic validation) runs with the model's own attention, not packed rows."""
    base = base_model(model)
    current = getattr(base.config, "_attn_implementation", None)
    if current != PACKED_ATTENTION:
        yield
        return
    base.set_attn_implementation("sdpa")
    try:
        yield
    finally:
        base.set_attn_implementation(current)


def packs_with_own_attention(model: torch.nn.Module) -> bool:
    """Whether training switches this model's flattened batches to `packed_attention`."""
    config = base_model(model).config
    return config._attn_implementation == "sdpa" and config.model_type in PLAIN_ATTENTION_TYPES
