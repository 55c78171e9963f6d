"""Activation memory for fine-tuning: what autograd keeps for the backward pass, layer by layer, then the head
and the loss. Pure functions of numbers (no torch), like harness/estimate/memory.py, kept apart from it because
this count is the estimator's largest and most method-specific part; harness/estimate/model_activations.py reads
a model's layers into the `Block`, `ActDtypes` and `Head` it takes.

- Korthikanti et al. 2022 (arXiv:2205.05198) Sec. 4.1 count, per layer, every tensor autograd keeps
  for the backward pass; for a GPT layer with 16-bit activations that is s*b*h*(34 + 5*a*s/h) bytes (the formula
  EleutherAI's cookbook `calc_transformer_mem.py` uses). `layer_activation_bytes` keeps their term-by-term
  accounting but reads it off the actual block (SwiGLU or GELU MLP, RMSNorm's float32 upcast, SDPA instead of an
  s x s softmax, grouped KV heads) and drops the inputs of frozen linear layers, which autograd does not keep
  (a frozen weight needs no weight gradient). `tests/test_estimate.py` checks the GPT case reproduces 34 + 5as/h.
  Full activation checkpointing keeps only each layer's input (Korthikanti Sec. 4.2: 2*s*b*h*L at 16 bits) plus
  one layer recomputed during the backward pass.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Block:
    """One transformer layer as the activation count needs it (dimensions and what trains in it)."""

    hidden: int
    intermediate: int
    heads: int
    head_dim: int
    kv_heads: int
    gated_mlp: bool                    # SwiGLU (gate, up, down) vs. GELU (up, down)
    rms_norm: bool                     # HF RMSNorm upcasts its input to float32 and keeps it
    attn: str = "sdpa"                 # "sdpa" / "flash_attention_2" keep no s x s matrix; "eager" does
    attn_dropout: float = 0.0
    hidden_dropout: float = 0.0
    attn_core_bytes: int = 0           # bytes of q, k, v and the s x s matrices if not dt.a (CPU math path: 4)
    trainable: frozenset[str] = frozenset()   # roles whose base weight trains: q k v o gate up down
    norms_trainable: bool = False
    adapters: tuple[tuple[str, str, int, int, int, float], ...] = ()  # (role, kind, in, out, r, dropout)


@dataclass(frozen=True)
class ActDtypes:
    """Bytes per element of the saved tensors: `a` matmul inputs/outputs, `res` the residual stream (norm inputs),
    `adapter` the adapters' own dtype (peft keeps LoRA weights in float32 and casts their input to it), `mask` a
    dropout mask (bool on CUDA; on CPU torch keeps the scaled noise tensor in the input's dtype)."""

    a: int
    res: int
    adapter: int = 4
    mask_cuda: bool = True
    mixed: bool = False   # autocast: each trainable linear keeps its own 16-bit cast of a shared input
    attn_mask: int = 0    # bytes per element of the b x s x s additive padding mask each layer's attention keeps

    def mask(self, dtype_bytes: int) -> int:
        return 1 if self.mask_cuda else dtype_bytes


def norm_bytes_per_token(blk: Block, dt: ActDtypes) -> float:
    """One norm: RMSNorm keeps its float32 input and rsqrt, plus its normalised output when its weight trains;
    LayerNorm keeps its input, mean and rstd (float32 on CUDA, the input's dtype on CPU)."""
    if blk.rms_norm:
        return 4 * blk.hidden + 4 + (dt.res * blk.hidden if blk.norms_trainable else 0)
    return dt.res * blk.hidden + 2 * (4 if dt.mask_cuda else dt.res)


def _linear_inputs(roles: list[str], blk: Block, dt: ActDtypes, width: int) -> float:
    """Input of linears sharing one input tensor: kept once if any weight trains (once per trainable linear
    under autocast, which casts the input separately for each)."""
    n = sum(r in blk.trainable for r in roles)
    if n == 0:
        return 0
    return (n if dt.mixed else 1) * dt.a * width


def adapter_bytes_per_token(kind: str, in_f: int, out_f: int, r: int, dropout: float, dt: ActDtypes) -> float:
    """Saved tensors an adapter adds on one frozen linear.

    LoRA (peft): input cast to the adapter dtype, dropout (mask + output kept for lora_A's weight gradient, or the
    cast input when dropout is 0), lora_A's output kept for lora_B. DoRA additionally keeps two output-sized
    tensors for the magnitude's gradient (and, with dropout > 0, a weight-sized copy: `adapter_weight_copies`). IA3 keeps
    the tensor it scales: a feed-forward module's input (cast to the adapter dtype), else its output. VeRA keeps
    a rank-wide and an output-wide tensor (its projections are frozen buffers, so their input is not kept).
    AdaLoRA keeps LoRA's per-token tensors (its weight-sized A * E product is in `adapter_weight_copies`).
    Other adapter kinds are counted like LoRA (their input kept in the adapter dtype). Checked against the
    tensors autograd saves (tests/test_estimate.py)."""
    d = dt.adapter
    if kind == "vera":
        # the frozen shared projections need no saved input: lambda_d's input (rank-wide) and lambda_b's
        # (output-wide) are what VeRA keeps, plus the dropout mask (peft 0.21 tuners/vera/layer.py Linear.forward)
        return d * r + d * out_f + (dt.mask(d) * in_f if dropout > 0 else 0)
    if kind in ("loha", "lokr"):
        # F.linear(x, delta_weight): the input cast to the adapter dtype; the update matrix itself is per layer
        return d * in_f
    if kind == "ia3_ff":
        return d * in_f
    if kind == "ia3":
        return dt.a * out_f
    kept = d * in_f + (dt.mask(d) * in_f if dropout > 0 else 0) + d * r
    if kind == "dora":
        # lora_B's output (adapter dtype) and the base output the magnitude rescales: recomputed in the adapter
        # dtype when dropout > 0, the base layer's own output (activation dtype) when dropout is 0
        kept += d * out_f + (d if dropout > 0 else dt.a) * out_f
    return kept


def adapter_weight_copies(blk: Block, dt: ActDtypes) -> int:
    """Weight-sized tensors adapters keep per layer (AdaLoRA's rank-by-input product included). DoRA with lora_dropout > 0 runs its base layer again, on the
    dropped-out input and a copy of the weight in the adapter dtype, which F.linear keeps for the backward pass;
    with dropout 0 it reuses the base layer's output and makes no copy (peft 0.21, tuners/lora/layer.py
    Linear.forward -> dora.py DoraLinearLayer.forward, `base_result`). Checked against the tensors autograd saves
    (tests/test_estimate.py)."""
    dora = sum(dt.adapter * in_f * out_f for _, kind, in_f, out_f, _, dropout in blk.adapters
               if kind == "dora" and dropout > 0)
    # LoHa and LoKr build each adapted layer's whole update matrix every step (peft 0.21 tuners/loha|lokr
    # layer.py get_delta_weight) and F.linear keeps it for the input's gradient: one out x in matrix per layer
    kron = sum(dt.adapter * in_f * out_f for _, kind, in_f, out_f, _, _ in blk.adapters if kind in ("loha", "lokr"))
    # AdaLoRA computes x @ (lora_A * lora_E).T (peft 0.21 tuners/adalora/layer.py SVDLinear.forward): the product
    # is a new r x in tensor the matmul keeps for the input's gradient, one per adapted layer
    svd = sum(dt.adapter * in_f * r for _, kind, in_f, _, r, _ in blk.adapters if kind == "adalora")
    return dora + kron + svd


def packed_attention_bytes(blk: Block, rows: int, width: int, tokens: int, dt: ActDtypes, eager: bool) -> float:
    """Attention core of a flattened batch under harness.packed_attention.packed_attention: q, k, v are scattered into
    `rows` x `width` (longest example) padded rows (`index_copy` keeps its flat sources: q, k and v at their own
    head counts; under autocast the rotary embedding leaves q and k in float32); there the eager path keeps q, k
    and v (keys and values repeated to all heads), the float32 softmax and its 16-bit cast (the second matmul's
    input); the SDPA path (no mask, so grouped keys and values stay unrepeated) keeps q, k, v, its output and the
    log-sum-exp. The output gathered back to the `tokens` real positions is the o-proj input, kept if that weight
    trains. Checked against autograd (tests/test_estimate.py)."""
    qkv_width, kv_width, a = blk.heads * blk.head_dim, blk.kv_heads * blk.head_dim, blk.heads
    if eager:
        per_slot = 3 * dt.a * qkv_width + (4 + (dt.a if dt.a < 4 else 0)) * a * width
    else:
        per_slot = dt.a * (2 * qkv_width + 2 * kv_width) + 4 * a
    rotated = 4 if dt.mixed else dt.a
    per_token = rotated * (qkv_width + kv_width) + dt.a * kv_width + (dt.a * qkv_width if "o" in blk.trainable else 0)
    return per_slot * rows * width + per_token * tokens


def layer_activation_bytes(blk: Block, s: int, b: float, dt: ActDtypes,
                           packed: tuple[int, int, bool] | None = None) -> float:
    """Bytes autograd keeps for one layer's backward pass (Korthikanti et al. 2022 Sec. 4.1, term by term).

    GPT layer (their case): 2sbh QKV input + 4sbh Q,K + 2sbh V + 2sbh o-proj input + sbh dropout mask
    + 5as^2b (softmax 2, dropout mask 1, dropout output 2) + MLP 2sbh input + 8sbh GELU input + 8sbh fc2 input
    + sbh mask + 2 x 2sbh LayerNorm inputs = 34sbh + 5as^2b.
    `packed` = (rows, longest row, eager): a flattened batch of s x b tokens whose attention runs per example
    (`packed_attention_bytes`)."""
    h, i, a, hd = blk.hidden, blk.intermediate, blk.heads, blk.head_dim
    qkv_width = a * hd
    core = blk.attn_core_bytes or dt.a
    per_token = 2 * norm_bytes_per_token(blk, dt)
    # attention: q/k/v inputs (the first norm's output), then the attention core
    per_token += _linear_inputs(["q", "k", "v"], blk, dt, h)
    packed_core = 0.0
    if packed is not None:
        rows, width, eager = packed
        packed_core = packed_attention_bytes(blk, rows, width, round(s * b), dt, eager)
    elif blk.attn == "eager":
        # q, k (keys repeated to all heads for grouped KV), softmax output, v; dropout on the probabilities
        per_token += 3 * core * qkv_width + core * a * s
        if blk.attn_dropout > 0:
            per_token += dt.mask(core) * a * s + core * a * s
        per_token += dt.a * qkv_width if "o" in blk.trainable else 0   # o-proj input: a contiguous copy
    else:
        # SDPA / flash keep q, k, v (repeated to all heads when kv_heads < heads), the output (which is also the
        # o-proj input) and the float32 log-sum-exp per head; no s x s matrix.
        per_token += 4 * dt.a * qkv_width + 4 * a
    if blk.hidden_dropout > 0:
        per_token += dt.mask(dt.a) * h
    # MLP
    if blk.gated_mlp:
        per_token += _linear_inputs(["gate", "up"], blk, dt, h)
        per_token += 3 * dt.a * i  # gate output (SiLU input), SiLU output and up output (both kept by the product)
        per_token += dt.a * i if "down" in blk.trainable else 0
    else:
        per_token += _linear_inputs(["up"], blk, dt, h)
        per_token += dt.a * i  # GELU input
        per_token += dt.a * i if "down" in blk.trainable else 0
    if blk.hidden_dropout > 0:
        per_token += dt.mask(dt.a) * h
    per_token += dt.attn_mask * s if packed is None else 0  # packed rows build their own causal mask
    for role, kind, in_f, out_f, r, p in blk.adapters:
        per_token += adapter_bytes_per_token(kind, in_f, out_f, r, p, dt)
    return per_token * s * b + packed_core + adapter_weight_copies(blk, dt)


def korthikanti_bytes(s: int, b: int, h: int, a: int, layers: int) -> float:
    """The closed form for a GPT model with 16-bit activations and no recomputation: s*b*h*L*(34 + 5*a*s/h)."""
    return s * b * h * layers * (34 + 5 * a * s / h)


@dataclass(frozen=True)
class Head:
    """The part after the last layer: final norm, output head and loss."""

    vocab: int                 # 0 for classification heads (their logits are negligible)
    head_trainable: bool
    logits_bytes: int          # dtype of the lm_head output (float32 after k-bit preparation)
    positions: float | None = None  # positions the head projects; None: all s x b (the harness's labelled-only
                                    # training projects only where a label follows)


# Bytes per logit element live while cross-entropy runs backward: its saved float32 log-softmax, the gradient
# arriving from the loss and the gradient of the float32 logits (4 each). Measured with torch's profiler
# (tests/test_estimate.py); on the bundled model it was the whole miss of prefix and prompt tuning, the methods
# whose loss sees every position (2.0-2.3 bytes per element above the forward's 10).
CE_BACKWARD_BYTES = 12


def head_activation_bytes(blk: Block, head: Head, s: int, b: float, dt: ActDtypes) -> float:
    """Final norm, the head's input (if it trains), and the loss on the logits.

    transformers' causal-LM loss upcasts the logits to float32 and cross-entropy keeps its log-softmax, so in the
    forward positions*V*(logits bytes + 4 + 4) are live (the upcast copy is skipped when the logits are float32
    already); its backward holds CE_BACKWARD_BYTES per element while the layers' activations are still live, so
    the larger of the two is what the loss adds to the peak."""
    positions = s * b if head.positions is None else head.positions
    kept = norm_bytes_per_token(blk, dt) * s * b + (dt.a * blk.hidden * positions if head.head_trainable else 0)
    if head.vocab:
        upcast = 4 if head.logits_bytes < 4 else 0
        kept += head.vocab * max(head.logits_bytes + upcast + 4, CE_BACKWARD_BYTES) * positions
    return kept


def activation_bytes(blocks: list[Block], head: Head, s: int, b: float, dt: ActDtypes, checkpointing: bool,
                     packed: tuple[int, int, bool] | None = None) -> dict[str, float]:
    """All activations of one micro-batch at the loss (their peak): the layers, then the head and loss.

    With checkpointing only each layer's input (residual dtype) is kept, plus one layer's activations while it
    is recomputed in the backward pass (Korthikanti Sec. 4.2)."""
    per_layer = [layer_activation_bytes(blk, s, b, dt, packed) for blk in blocks]
    if checkpointing:
        layers = sum(dt.res * blk.hidden * s * b for blk in blocks) + max(per_layer, default=0)
    else:
        layers = sum(per_layer)
    return {"layers": layers, "head_and_loss": head_activation_bytes(blocks[0], head, s, b, dt) if blocks else 0}
