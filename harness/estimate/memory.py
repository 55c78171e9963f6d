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
- activations: harness/estimate/activation_memory.py (Korthikanti et al. 2022, read off the actual block).
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
