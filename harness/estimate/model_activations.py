"""Activations read off a model with its method applied: each transformer layer's linears, adapters, norms and
attention become the `Block` (and the precision the `ActDtypes`, the output head the `Head`) that
harness/estimate/activation_memory.py counts, for the configured batch or for a run's recorded largest one.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from harness.errors import ConfigError
from harness.estimate import activation_memory as am
from harness.estimate.model_weights import DTYPE_BYTES

# Roles of a layer's linear modules (suffix of the module name inside the layer); longest suffix first.
ROLE_SUFFIXES = (
    ("attention.self.query", "q"), ("attention.self.key", "k"), ("attention.self.value", "v"),
    ("attention.output.dense", "o"), ("intermediate.dense", "up"), ("output.dense", "down"),
    ("q_proj", "q"), ("k_proj", "k"), ("v_proj", "v"), ("o_proj", "o"),
    ("gate_proj", "gate"), ("up_proj", "up"), ("down_proj", "down"),
)


def layer_list(model: nn.Module, n_layers: int) -> nn.ModuleList:
    lists = [m for m in model.modules() if isinstance(m, nn.ModuleList) and len(m) == n_layers]
    if not lists:
        raise ConfigError(f"cannot find the {n_layers} transformer layers of {type(model).__name__}")
    return lists[0]


def _adapter(module: nn.Module) -> tuple[str, int, float] | None:
    """(kind, rank, dropout) of a peft layer wrapping a linear, or None for a plain linear."""
    from peft.tuners.ia3 import IA3Layer
    from peft.tuners.lora import LoraLayer

    if isinstance(module, LoraLayer):
        from peft.tuners.adalora import AdaLoraLayer

        key = next(iter(module.r))
        drop = module.lora_dropout[key]
        kind = "adalora" if isinstance(module, AdaLoraLayer) else "dora" if module.use_dora.get(key) else "lora"
        return kind, int(module.r[key]), float(drop.p) if isinstance(drop, nn.Dropout) else 0.0
    if isinstance(module, IA3Layer):
        return ("ia3_ff" if module.is_feedforward else "ia3"), 0, 0.0
    from peft.tuners.loha import LoHaLayer
    from peft.tuners.lokr import LoKrLayer
    from peft.tuners.vera import VeraLayer

    if isinstance(module, (LoHaLayer, LoKrLayer)):
        key = next(iter(module.r))
        return ("loha" if isinstance(module, LoHaLayer) else "lokr"), int(module.r[key]), 0.0

    if isinstance(module, VeraLayer):
        key = next(iter(module.r))
        drop = module.vera_dropout[key]
        return "vera", int(module.r[key]), float(drop.p) if isinstance(drop, nn.Dropout) else 0.0
    if hasattr(module, "base_layer") and any(p.requires_grad for p in module.parameters()):
        rank = getattr(module, "r", {}) or {}
        return "other", int(next(iter(rank.values()), 0)) if isinstance(rank, dict) else 0, 0.0
    return None


def layer_block(layer: nn.Module, config: Any, dt: am.ActDtypes, device: str) -> am.Block:
    roles, trainable, adapters = {}, set(), []
    for name, module in layer.named_modules():
        role = next((r for suffix, r in ROLE_SUFFIXES if name == suffix or name.endswith("." + suffix)), None)
        if role is None or role in roles or not isinstance(getattr(module, "base_layer", module), nn.Linear):
            continue
        base = getattr(module, "base_layer", module)
        roles[role] = base
        if base.weight.requires_grad:
            trainable.add(role)
        adapter = _adapter(module) if module is not base else None
        if adapter:
            adapters.append((role, adapter[0], base.in_features, base.out_features, adapter[1], adapter[2]))
    norms = [m for m in layer.modules() if "Norm" in type(m).__name__]
    heads = config.num_attention_heads
    attn = getattr(config, "_attn_implementation", None) or "sdpa"
    attn_dropout = float(getattr(config, "attention_dropout", 0.0) or getattr(config, "attention_probs_dropout_prob", 0.0) or 0.0)
    core = 0
    if attn == "sdpa" and attn_dropout > 0 and device == "cpu":
        # torch's CPU SDPA runs dropout through its math path: float32 q, k, v and s x s matrices kept
        attn, core = "eager", 4
    return am.Block(
        hidden=config.hidden_size, intermediate=config.intermediate_size, heads=heads,
        head_dim=getattr(config, "head_dim", None) or config.hidden_size // heads,
        kv_heads=getattr(config, "num_key_value_heads", None) or heads, gated_mlp="gate" in roles,
        rms_norm=any("RMS" in type(m).__name__ for m in norms),
        attn=attn, attn_dropout=attn_dropout, attn_core_bytes=core,
        hidden_dropout=float(getattr(config, "hidden_dropout_prob", 0.0) or 0.0),
        trainable=frozenset(trainable), norms_trainable=any(p.requires_grad for m in norms for p in m.parameters()),
        adapters=tuple(adapters),
    )


def act_dtypes(precision: str, quantized: bool, device: str, causal: bool = True) -> am.ActDtypes:
    """Saved-tensor dtypes per precision. A k-bit-prepared model runs float32 between its 4-bit linears
    (bitsandbytes returns the input's dtype, and the embeddings were upcast), so its activations are float32.
    Causal LMs keep a padding mask per layer in the weights' dtype (seen in autograd's saved tensors)."""
    cuda = device == "cuda"
    if quantized or precision == "fp32":
        return am.ActDtypes(a=4, res=4, mask_cuda=cuda, attn_mask=4 if causal else 0)
    if precision.endswith("-mixed"):
        return am.ActDtypes(a=2, res=4, mask_cuda=cuda, mixed=True, attn_mask=4 if causal else 0)
    return am.ActDtypes(a=2, res=2, mask_cuda=cuda, attn_mask=2 if causal else 0)


def packed_rows(model: nn.Module, batch_shape: dict[str, Any], device: str) -> tuple[int, int, bool] | None:
    """(rows, longest row, eager) when a recorded batch was flattened and its attention ran per example through
    harness.packed_attention.packed_attention (eager on a CPU for short rows); None otherwise."""
    from harness.packed_attention import packed_rows_run_eager, packs_with_own_attention

    if not batch_shape.get("flattened") or not packs_with_own_attention(model):
        return None
    width = int(batch_shape["longest_row"])
    return int(batch_shape["rows"]), width, packed_rows_run_eager(device, width)


def model_activations(model: nn.Module, eff: dict[str, Any], s: int, b: float, device: str,
                      logit_positions: int | None = None, packed: tuple[int, int, bool] | None = None
                      ) -> dict[str, float]:
    """Activation bytes of one micro-batch of `b` x `s` tokens for a model with its method applied (the head
    projecting `logit_positions` of them, None: all; `packed`: see `packed_rows`)."""
    train, quant = eff["train"], eff["method"].get("quantization")
    config = model.config
    mixed = train["precision"].endswith("-mixed")
    dt = act_dtypes(train["precision"], bool(quant), device, eff["model"]["kind"] == "causal_lm")
    blocks = [layer_block(layer, config, dt, device) for layer in layer_list(model, config.num_hidden_layers)]
    out_emb = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    logits_dtype = out_emb.weight.dtype if out_emb is not None else torch.float32
    head = am.Head(vocab=config.vocab_size if eff["model"]["kind"] == "causal_lm" else 0,
                   head_trainable=bool(out_emb is not None and out_emb.weight.requires_grad),
                   logits_bytes=2 if mixed else DTYPE_BYTES.get(logits_dtype, 4), positions=logit_positions)
    return am.activation_bytes(blocks, head, s, b, dt, bool(train.get("gradient_checkpointing")), packed)


def batch_activations(model: nn.Module, eff: dict[str, Any], s: int, b: int, device: str,
                      batch_shape: dict[str, int] | None, notes: list[str]) -> tuple[int, dict[str, int]]:
    """(the sequence length with prompt tuning's virtual tokens, activation bytes by kind) for the configured
    batch, or for the run's largest one (`batch_shape`); what was assumed goes into `notes`."""
    method = eff["method"]
    # prompt tuning prepends its virtual tokens to every sequence: every per-token term, the logits included
    # (peft's prompt-tuning forward returns logits at the virtual positions too), sees them; prefix tuning's
    # virtual tokens are keys and values only, not positions
    virtual = int((method.get("peft_kwargs") or {}).get("num_virtual_tokens") or 0)
    virtual = virtual if method.get("peft_type") == "PROMPT_TUNING" else 0
    if virtual:
        s += virtual
        notes.append(f"prompt tuning: {virtual} virtual tokens lengthen every sequence")
    if batch_shape:  # per-token terms see all its tokens; length-squared terms its longest row (an upper bound)
        longest = int(batch_shape["longest_row"]) + virtual
        tokens = int(batch_shape["tokens"]) + virtual * int(batch_shape["rows"])
        positions = batch_shape.get("logit_positions")
        if positions is not None and positions >= int(batch_shape["tokens"]):  # logits at every position
            positions += virtual * int(batch_shape["rows"])
        acts = model_activations(model, eff, longest, tokens / longest, device, positions,
                                 packed_rows(model, batch_shape, device))
        notes.append(f"activations for the run's largest batch: {tokens} tokens in {batch_shape['rows']} rows "
                     f"(longest {longest}), logits at {positions if positions is not None else tokens} positions")
    else:
        acts = model_activations(model, eff, s, b, device)
    return s, acts
