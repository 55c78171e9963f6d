"""Memory arithmetic for fine-tuning, from first principles: every term is bytes = count x bytes-per-element.

Pure functions of numbers (no torch): `harness.estimate` reads the counts off a meta-device model and calls these.
Sources for each formula are given where it is defined:

- weights / gradients / AdamW states: bytes per element of each tensor's dtype; ZeRO (Rajbhandari et al. 2020,
  arXiv:1910.02054, Sec. 3.1: mixed-precision Adam holds 2+2+12 = 16 B/param) and the transformers docs page
  "Model training anatomy". Gradients and torch AdamW states take the parameter's own dtype.
- NF4 + double quantisation: Dettmers et al. 2023 (QLoRA, arXiv:2305.14314) Sec. 3: 4-bit weights in blocks of 64
  with one absmax per block; double quantisation stores those absmax in 8 bits with one fp32 constant per 256
  of them: 8/64 + 32/(64*256) = 0.127 bits/param instead of 32/64 = 0.5.
- 8-bit optimizers: Dettmers et al. 2022 (arXiv:2110.02861): block-wise (2048 in the paper, 256 in bitsandbytes'
  Optimizer8bit) quantised states, one fp32 absmax per block; tensors under 4096 elements keep 32-bit states
  (bitsandbytes `min_8bit_size`).
- activations: Korthikanti et al. 2022 (arXiv:2205.05198) Sec. 4.1 count, per layer, every tensor autograd keeps
  for the backward pass; for a GPT layer with 16-bit activations that is s*b*h*(34 + 5*a*s/h) bytes (the formula
  EleutherAI's cookbook `calc_transformer_mem.py` uses). `layer_activation_bytes` keeps their term-by-term
  accounting but reads it off the actual block (SwiGLU or GELU MLP, RMSNorm's float32 upcast, SDPA instead of an
  s x s softmax, grouped KV heads) and drops the inputs of frozen linear layers, which autograd does not keep
  (a frozen weight needs no weight gradient). `tests/test_estimate.py` checks the GPT case reproduces 34 + 5as/h.
  Full activation checkpointing keeps only each layer's input (Korthikanti Sec. 4.2: 2*s*b*h*L at 16 bits) plus
  one layer recomputed during the backward pass.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

GiB = 2**30
NF4_BLOCK = 64          # bitsandbytes 4-bit blocksize for weights (QLoRA paper: 64)
DQ_BLOCK = 256          # double quantisation: one fp32 constant per 256 absmax values
OPT8_BLOCK = 256        # bitsandbytes 8-bit optimizer state blocksize
OPT8_MIN_SIZE = 4096    # bitsandbytes keeps 32-bit states for tensors smaller than this


# ---- weights -------------------------------------------------------------------------------------------------

def nf4_bytes(numel: int, double_quant: bool, blocksize: int = NF4_BLOCK) -> int:
    """Bytes of one bitsandbytes 4-bit (NF4/FP4) weight: packed 4-bit values plus its quantisation constants.

    Without double quantisation each block of 64 has an fp32 absmax (0.5 bits/param); with it the absmax are
    uint8 with one fp32 scale per 256 blocks and one fp32 offset per tensor (0.127 bits/param; QLoRA Sec. 3)."""
    packed = math.ceil(numel / 2)
    blocks = math.ceil(numel / blocksize)
    if double_quant:
        return packed + blocks + 4 * math.ceil(blocks / DQ_BLOCK) + 4
    return packed + 4 * blocks


def int8_bytes(numel: int, out_features: int) -> int:
    """Bytes of one LLM.int8() weight (Dettmers et al. 2022, arXiv:2208.07339): int8 values + an fp32 scale per row."""
    return numel + 4 * out_features


# ---- optimizer -----------------------------------------------------------------------------------------------

# transformers `optim` names -> (states per element, state kind, paged). "param": states in the parameter's dtype
# (torch.optim.AdamW: exp_avg and exp_avg_sq are zeros_like(param)); "fp32": bitsandbytes 32-bit states;
# "8bit": bitsandbytes block-wise 8-bit states; "factored": Adafactor's row + column second moments.
OPTIMIZERS: dict[str, tuple[int, str, bool]] = {
    "adamw_torch": (2, "param", False), "adamw_torch_fused": (2, "param", False), "adamw_hf": (2, "param", False),
    "adamw_torch_xla": (2, "param", False), "adamw_apex_fused": (2, "param", False),
    "adamw_bnb_8bit": (2, "8bit", False), "adamw_8bit": (2, "8bit", False), "paged_adamw_8bit": (2, "8bit", True),
    "paged_adamw_32bit": (2, "fp32", True), "paged_adamw": (2, "fp32", True),
    "adafactor": (1, "factored", False), "sgd": (0, "param", False), "adagrad": (1, "param", False),
    "rmsprop": (1, "param", False),
}


@dataclass(frozen=True)
class Tensor:
    """What the arithmetic needs to know about one parameter."""

    numel: int
    bytes_per_el: int
    shape: tuple[int, ...] = ()


def optimizer_state_bytes(optim: str, trainable: list[Tensor]) -> int:
    """Bytes of optimizer state for the trainable tensors (raises KeyError for an unknown optimizer)."""
    n_states, kind, _ = OPTIMIZERS[optim]
    total = 0
    for t in trainable:
        if kind == "param":
            total += n_states * t.numel * t.bytes_per_el
        elif kind == "fp32":
            total += n_states * t.numel * 4
        elif kind == "8bit":
            if t.numel < OPT8_MIN_SIZE:
                total += n_states * t.numel * 4
            else:
                total += n_states * (t.numel + 4 * math.ceil(t.numel / OPT8_BLOCK))
        elif kind == "factored":  # Adafactor (Shazeer & Stern 2018): row and column sums for matrices
            total += 4 * (sum(t.shape[-2:]) if len(t.shape) >= 2 else t.numel)
    return total


def optimizer_step_temp_bytes(optim: str, trainable: list[Tensor], device: str) -> int:
    """Transient memory of one optimizer step. torch's AdamW runs multi-tensor ("foreach") on CUDA, which
    materialises sqrt(exp_avg_sq) for every tensor at once (one state-sized copy); on CPU it loops per tensor, so
    the temporary is one tensor's worth. Fused and bitsandbytes kernels update in place."""
    if not trainable or optim in ("adamw_torch_fused",) or optim.startswith(("adamw_bnb", "adamw_8bit", "paged_")):
        return 0
    if optim == "sgd":
        return 0
    if device == "cuda" and optim in ("adamw_torch", "adamw_hf"):
        return sum(t.numel * t.bytes_per_el for t in trainable)
    return max(t.numel * t.bytes_per_el for t in trainable)


def adalora_state_bytes(adapter: list[Tensor]) -> int:
    """AdaLoRA's rank allocator (peft `RankAllocator.update_ipt`, called after every optimizer step) keeps three
    tensors shaped like every adapter parameter (lora_A, lora_E, lora_B): the sensitivity `ipt` and its smoothed
    mean and uncertainty `exp_avg_ipt` / `exp_avg_unc`, each `zeros_like(p)`, so in the parameter's dtype. They live
    until the final allocation step (`reset_ipt` at total_step - tfinal; never, when tfinal is 0)."""
    return 3 * sum(t.numel * t.bytes_per_el for t in adapter)


# ---- activations ---------------------------------------------------------------------------------------------

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
    """Attention core of a flattened batch under harness.training.packed_attention: q, k, v are scattered into
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


# ---- peak ----------------------------------------------------------------------------------------------------

@dataclass
class Memory:
    """The breakdown (bytes). `peak` models when each part is live; `sum_of_parts` is the simple upper bound."""

    weights: int
    weights_detail: dict[str, int]
    autocast_copies: int
    gradients: int
    optimizer: int
    optimizer_step_temp: int
    activations: float
    activations_detail: dict[str, float]
    first_gradient: int            # the first gradient the backward pass makes (the output head's, if it trains)
    overhead: int
    overhead_note: str
    paged_optimizer: bool = False
    notes: list[str] = field(default_factory=list)
    method_state: int = 0          # what a method keeps between steps besides optimizer states (AdaLoRA's scores)
    dist_buffers: int = 0          # several GPUs: DDP's gradient buckets, or FSDP/ZeRO-3's gathered units (per_gpu)

    @property
    def peak(self) -> float:
        """weights + optimizer states + the larger of two phases:
        - forward/backward: autocast copies + activations + the first gradient (activations are freed while the
          gradients grow layer by layer, so the two overlap little), or all gradients at the end of the backward;
        - optimizer step: all gradients + the step's temporaries.
        Paged optimizer states live in CUDA unified memory and may move to the host; they are counted here.
        A method's own state (`method_state`) is live from the first step on, like the optimizer's."""
        fwd_bwd = self.autocast_copies + max(self.activations + self.first_gradient, self.gradients)
        step = self.gradients + self.optimizer_step_temp
        return self.weights + self.optimizer + self.method_state + self.dist_buffers + max(fwd_bwd, step) + self.overhead

    @property
    def sum_of_parts(self) -> float:
        return (self.weights + self.autocast_copies + self.gradients + self.optimizer + self.method_state
                + self.dist_buffers + self.optimizer_step_temp + self.activations + self.overhead)

    def as_dict(self) -> dict[str, object]:
        return {
            "weights": self.weights, "weights_detail": self.weights_detail, "autocast_copies": self.autocast_copies,
            "gradients": self.gradients, "optimizer": self.optimizer, "method_state": self.method_state,
            "dist_buffers": self.dist_buffers,
            "optimizer_step_temp": self.optimizer_step_temp,
            "activations": int(self.activations), "activations_detail": {k: int(v) for k, v in self.activations_detail.items()},
            "overhead": self.overhead, "overhead_note": self.overhead_note, "paged_optimizer": self.paged_optimizer,
            "peak": int(self.peak), "sum_of_parts": int(self.sum_of_parts), "notes": self.notes,
        }


# ---- several GPUs ----------------------------------------------------------------------------------------------

# Which persistent terms a strategy divides across its GPUs (ZeRO paper, arXiv:1910.02054 Sec. 5: stage 1 the
# optimizer states, stage 2 also the gradients, stage 3 also the parameters; FSDP full_shard = stage 3).
# Activations are never sharded: each GPU keeps those of its own micro-batch.
SHARDED_TERMS: dict[str, tuple[str, ...]] = {
    "none": (), "ddp": (), "zero2": ("gradients", "optimizer"),
    "zero3": ("weights", "gradients", "optimizer"), "fsdp": ("weights", "gradients", "optimizer"),
    "fsdp-offload": ("weights", "gradients", "optimizer"),
}


def per_gpu(memory: Memory, strategy: str, gpus: int, largest_unit_bytes: int, largest_unit_grad_bytes: int) -> Memory:
    """One GPU's share of a run on `gpus` GPUs.

    - ddp: nothing shards; the reducer's gradient buckets are a second copy of the gradients (torch DDP,
      `gradient_as_bucket_view=False`, its default: "saves a memory size equal to the total gradients size").
    - zero2 / zero3 / fsdp: the sharded terms (`SHARDED_TERMS`) are divided by `gpus`; zero3 and fsdp all-gather
      one wrapped unit (a transformer layer, or the root's embeddings and head) at a time and prefetch the next,
      so two units' full weights are live (counted at the parameters' dtype, an upper bound under mixed
      precision), plus one unit's unsharded gradient before its reduce-scatter.
    - fsdp-offload: weights, gradients and optimizer states live in host memory; the GPU holds the gathered units."""
    import dataclasses

    if gpus <= 1 and strategy in ("none", "ddp"):
        return memory
    shard = SHARDED_TERMS[strategy]
    keep = 0.0 if strategy == "fsdp-offload" else 1.0 / gpus
    parts = {term: int(getattr(memory, term) * keep) for term in shard}
    if "optimizer" in shard:
        parts["optimizer_step_temp"] = int(memory.optimizer_step_temp * keep)
    buffers = memory.gradients if strategy == "ddp" else 0
    if "weights" in shard:
        # (never more than the whole model gathered, as in a model of one or two units)
        buffers = min(2 * largest_unit_bytes + largest_unit_grad_bytes, memory.weights + memory.gradients)
        # FSDP's mixed precision gathers each unit in the compute dtype: no whole-model autocast copy
        parts["autocast_copies"] = 0
    where = "host memory" if strategy == "fsdp-offload" else f"1/{gpus} per GPU"
    note = (f"dist={strategy} on {gpus} GPUs: " + (", ".join(shard) + f" in {where}" if shard else "nothing sharded")
            + (f"; {'gradient buckets' if strategy == 'ddp' else 'gathered units'} {buffers / GiB:.2f} GiB"
               if buffers else "") + "; activations per GPU (never sharded)")
    return dataclasses.replace(memory, **parts, dist_buffers=buffers, notes=[*memory.notes, note])


# ---- disk and cost -------------------------------------------------------------------------------------------

SAFETENSORS_HEADER_PER_TENSOR = 100   # JSON entry per tensor (name, dtype, shape, offsets), roughly
ADAPTER_SIDE_FILES = 6_000            # peft's adapter_config.json + README.md model card, roughly
MODEL_SIDE_FILES = 2_000              # config.json + generation_config.json, roughly


def checkpoint_bytes(tensors: list[Tensor], adapter: bool) -> int:
    """What save_pretrained writes: each saved tensor in its dtype, a safetensors header, and the side files."""
    data = sum(t.numel * t.bytes_per_el for t in tensors)
    return data + SAFETENSORS_HEADER_PER_TENSOR * len(tensors) + (ADAPTER_SIDE_FILES if adapter else MODEL_SIDE_FILES)


def train_flops_per_token(total_params: int, trainable_params: int, full: bool, checkpointing: bool) -> float:
    """Training FLOPs per token: 6N for full fine-tuning (Kaplan et al. 2020, arXiv:2001.08361: forward 2N,
    backward 4N). A frozen base skips the weight-gradient half of its backward: 4N + 6 x trainable. Activation
    checkpointing recomputes the forward: +2N. Attention's s^2 term is left out (small at these lengths)."""
    n = total_params
    flops = 6 * n if full else 4 * n + 6 * trainable_params
    return flops + (2 * n if checkpointing else 0)


def run_cost(tokens: float, tokens_per_s: float, price_per_hour: float) -> dict[str, float]:
    hours = tokens / tokens_per_s / 3600
    return {"tokens": tokens, "tokens_per_s": tokens_per_s, "hours": hours, "usd": hours * price_per_hour}
