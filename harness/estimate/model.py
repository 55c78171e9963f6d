"""The estimate itself: the model is built on the meta device and the method applied to it
(harness/estimate/meta_model.py), and the counts read off it (harness/estimate/model_weights.py,
harness/estimate/model_activations.py) go through the arithmetic of harness/estimate/memory.py into one
`Estimate`: parameters, the memory breakdown and peak, disk and cost. The overrides are harness.run's
(harness/estimate/run_config.py).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from harness.errors import ConfigError
from harness.estimate import memory as em
from harness.estimate.meta_model import prepare_model
from harness.estimate.model_activations import batch_activations, layer_list
from harness.estimate.model_weights import DTYPE_BYTES, tensor_of, weight_bytes
from harness.estimate.run_config import compose_config, effective

# Assumed, not measured here (no GPU on this machine): the CUDA context, outside torch's allocated figure.
CUDA_CONTEXT_BYTES = 500 * 2**20
# Measured here: resident memory at the start of training less the model's weights (Python, torch, transformers,
# peft, datasets, tokenizer, task data): 717-723 MiB in smollm2-135m classify runs (full FT, LoRA, QLoRA; torch
# 2.13 CPU) from a fresh install, as CI and a new user have it. A long-used install measured about 625 MiB: fewer
# of the shared libraries' pages were mapped (libtorch_cpu.so 68 MiB resident there against 128 MiB fresh).
CPU_RUNTIME_BYTES = 720 * 2**20


@dataclass
class Estimate:
    """One configuration's prediction: parameter counts (peft's), memory breakdown, disk, cost."""

    model: str
    method: str
    r: int | None
    targets: str | None
    precision: str
    optim: str
    seq_len: int
    batch_size: int
    checkpointing: bool
    device: str
    params_total: int
    params_trainable: int
    memory: em.Memory
    disk_bytes: int
    cost: dict[str, float]
    quantization: dict[str, Any] | None = None
    notes: list[str] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        out = {k: v for k, v in self.__dict__.items() if k != "memory"}
        return out | {"memory": self.memory.as_dict(), "trainable_pct": 100 * self.params_trainable / self.params_total}


def estimate(eff: dict[str, Any], *, device: str = "cuda", seq_len: int | None = None, tokens_per_s: float | None = None,
             price_per_hour: float = 2.0, gpu_tflops: float = 989.0, mfu: float = 0.35, cache: Path | None = None,
             cpu_runtime_bytes: int = CPU_RUNTIME_BYTES, batch_shape: dict[str, int] | None = None) -> Estimate:
    """Predict a run from its effective config (harness.config.effective_config, or a result.json's `config`).

    `seq_len` is the padded length of a batch (default train.max_seq_len). `batch_shape` (a run's recorded
    `largest_batch`: tokens, rows, longest_row, logit_positions) replaces the b x s batch for the activations
    with what training actually computed (flattened rows, labelled-only logits). `device` picks the overhead and the
    optimizer's kernels: "cuda" (CUDA context; torch's allocated figure plus that context) or "cpu" (the resident
    memory of the harness process). Throughput is `tokens_per_s` if given, else FLOPs / (gpu_tflops x mfu)."""
    optim = str(eff["train"].get("optim", "adamw_torch"))
    if optim not in em.OPTIMIZERS:
        raise ConfigError(f"train.optim={optim} has no memory model; choose one of {', '.join(sorted(em.OPTIMIZERS))}")
    model, qbytes, _ = prepare_model(eff, cache)
    return estimate_model(model, eff, qbytes, device=device, seq_len=seq_len, tokens_per_s=tokens_per_s,
                          price_per_hour=price_per_hour, gpu_tflops=gpu_tflops, mfu=mfu, cpu_runtime_bytes=cpu_runtime_bytes,
                          batch_shape=batch_shape)


def estimate_model(model: nn.Module, eff: dict[str, Any], qbytes: dict[int, int], *, device: str = "cuda",
                   seq_len: int | None = None, tokens_per_s: float | None = None, price_per_hour: float = 2.0,
                   gpu_tflops: float = 989.0, mfu: float = 0.35, cpu_runtime_bytes: int = CPU_RUNTIME_BYTES,
                   batch_shape: dict[str, int] | None = None) -> Estimate:
    """The estimate for a model that already has its method applied (meta device or real)."""
    from harness.methods import count_parameters

    train, method = eff["train"], eff["method"]
    total, trainable = count_parameters(model)
    params = list(model.named_parameters())  # shared (tied) parameters appear once
    train_tensors = [tensor_of(p) for _, p in params if p.requires_grad]
    s, b = int(seq_len or train["max_seq_len"]), int(train["batch_size"])
    notes: list[str] = []
    checkpointing = bool(train.get("gradient_checkpointing"))
    s, acts = batch_activations(model, eff, s, b, device, batch_shape, notes)
    memory = _memory(model, eff, params, train_tensors, qbytes, acts, device, cpu_runtime_bytes)
    dist = eff.get("dist")
    if dist:  # one GPU's share (per_gpu leaves a one-GPU run as it is)
        memory = em.per_gpu(memory, dist["strategy"] if dist["strategy"] != "none" else "ddp",
                            int(dist.get("gpus") or dist.get("world_size") or 1), *_largest_unit(model))
        notes.extend(memory.notes)
    if memory.paged_optimizer:
        notes.append("paged optimizer: states sit in CUDA unified memory (not in torch's allocated figure) and move "
                     "to host RAM under pressure")
    full = method.get("peft_type") is None
    disk = em.checkpoint_bytes([tensor_of(p) for _, p in params] if full else train_tensors, adapter=not full)
    tokens = int(train["max_steps"]) * b * int(train.get("grad_accum", 1)) * s
    if tokens_per_s is None:
        flops = em.train_flops_per_token(total, trainable, full, checkpointing)
        tokens_per_s = gpu_tflops * 1e12 * mfu / flops
        notes.append(f"throughput assumed: {gpu_tflops:g} TFLOP/s x {mfu:g} utilisation / {flops / 1e9:.1f} GFLOP per token")
    cost = em.run_cost(tokens, tokens_per_s, price_per_hour) | {"price_per_hour": price_per_hour}
    return Estimate(
        model=eff["model"]["name"], method=method["name"], r=eff.get("r"),
        targets=(eff.get("targets") or {}).get("name"), precision=train["precision"],
        optim=str(train.get("optim", "adamw_torch")), seq_len=s, batch_size=b, checkpointing=checkpointing,
        device=device, params_total=total, params_trainable=trainable, memory=memory, disk_bytes=disk, cost=cost,
        quantization=_quantization(method.get("quantization") or None, qbytes), notes=notes,
    )


def _memory(model: nn.Module, eff: dict[str, Any], params: list[tuple[str, nn.Parameter]],
            train_tensors: list[em.Tensor], qbytes: dict[int, int], acts: dict[str, int], device: str,
            cpu_runtime_bytes: int) -> em.Memory:
    """The breakdown on one device, before any sharding across GPUs: weights by storage, autocast's copies,
    gradients, optimizer and method state, the activations `acts` and the device's overhead."""
    train, method = eff["train"], eff["method"]
    optim = str(train.get("optim", "adamw_torch"))
    weights_detail = weight_bytes(params, qbytes, method.get("quantization") or None)
    mixed = train["precision"].endswith("-mixed")
    # autocast casts every float32 linear weight to 16 bits once per forward and keeps it for the backward
    autocast = sum(2 * m.weight.numel() for m in model.modules()
                   if mixed and isinstance(m, nn.Linear) and m.weight.dtype == torch.float32)
    out_emb = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    first_grad = (out_emb.weight.numel() * DTYPE_BYTES[out_emb.weight.dtype]
                  if out_emb is not None and out_emb.weight.requires_grad else 0)
    if device == "cuda":
        overhead, overhead_note = CUDA_CONTEXT_BYTES, "CUDA context (assumed 0.5 GiB; not in torch's allocated figure)"
    else:
        overhead, overhead_note = cpu_runtime_bytes, "process runtime: Python, torch, transformers, tokenizer, data (measured RSS)"
    return em.Memory(
        weights=sum(weights_detail.values()), weights_detail=weights_detail, autocast_copies=autocast,
        gradients=sum(t.numel * t.bytes_per_el for t in train_tensors),
        optimizer=em.optimizer_state_bytes(optim, train_tensors),
        optimizer_step_temp=em.optimizer_step_temp_bytes(optim, train_tensors, device),
        activations=sum(acts.values()), activations_detail=acts, first_gradient=first_grad,
        overhead=overhead, overhead_note=overhead_note, paged_optimizer=em.OPTIMIZERS[optim][2],
        method_state=em.adalora_state_bytes([tensor_of(p) for n, p in params if p.requires_grad and "lora_" in n])
        if method.get("peft_type") == "ADALORA" else 0,
    )


def _quantization(quant: dict[str, Any] | None, qbytes: dict[int, int]) -> dict[str, Any] | None:
    """The bitsandbytes settings the estimate assumed, for the record (None without quantisation)."""
    if not quant:
        return None
    return {"bits": 4 if quant.get("load_in_4bit") else 8, "quant_type": quant.get("bnb_4bit_quant_type"),
            "double_quant": bool(quant.get("bnb_4bit_use_double_quant")), "quantized_linear": len(qbytes)}


def _largest_unit(model: nn.Module) -> tuple[int, int]:
    """Bytes of the largest FSDP unit's weights and trainable gradients: a transformer layer, or what the root
    keeps (embeddings, final norm, head), as auto_wrap groups a model by its layer classes."""
    layers = layer_list(model, int(getattr(model.config, "num_hidden_layers", 0) or 0)) \
        if getattr(model, "config", None) is not None else []
    in_layers = {id(p) for layer in layers for p in layer.parameters()}
    units = [list(layer.parameters()) for layer in layers]
    units.append([p for p in model.parameters() if id(p) not in in_layers])

    def size(params, trainable_only: bool) -> int:
        return sum(p.numel() * DTYPE_BYTES[p.dtype] for p in params if p.requires_grad or not trainable_only)

    return max(size(u, False) for u in units), max(size(u, True) for u in units)


def estimate_overrides(overrides: list[str], **kwargs: Any) -> Estimate:
    """`estimate` for command-line style overrides (`["model=llama-3.1-8b", "method=lora", "r=16"]`)."""
    return estimate(effective(compose_config(overrides)), **kwargs)
