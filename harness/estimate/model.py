"""The estimate itself: the model is built on the meta device from its config (hub presets carry theirs as
`hf_config:` in conf/model/, so no network is needed), the method is applied with the harness's own `plan_method` /
`apply_method`, so trainable counts are peft's, and the counts read off it go through harness/estimate/memory.py.
The overrides are harness.run's (Hydra over conf/), checked by the same path (harness/preflight.py).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig, OmegaConf
from torch import nn

from harness.estimate import memory as em
from harness.errors import ConfigError
from harness.models import HEAD_NAMES

# Roles of a layer's linear modules (suffix of the module name inside the layer); longest suffix first.
ROLE_SUFFIXES = (
    ("attention.self.query", "q"), ("attention.self.key", "k"), ("attention.self.value", "v"),
    ("attention.output.dense", "o"), ("intermediate.dense", "up"), ("output.dense", "down"),
    ("q_proj", "q"), ("k_proj", "k"), ("v_proj", "v"), ("o_proj", "o"),
    ("gate_proj", "gate"), ("up_proj", "up"), ("down_proj", "down"),
)
# Assumed, not measured here (no GPU on this machine): the CUDA context, outside torch's allocated figure.
CUDA_CONTEXT_BYTES = 500 * 2**20
# Measured here: resident memory at the start of training less the model's weights (Python, torch, transformers,
# peft, datasets, tokenizer, task data): 717-723 MiB in smollm2-135m classify runs (full FT, LoRA, QLoRA; torch
# 2.13 CPU) from a fresh install, as CI and a new user have it. A long-used install measured about 625 MiB: fewer
# of the shared libraries' pages were mapped (libtorch_cpu.so 68 MiB resident there against 128 MiB fresh).
CPU_RUNTIME_BYTES = 720 * 2**20
DTYPE_BYTES = {torch.float32: 4, torch.bfloat16: 2, torch.float16: 2, torch.float64: 8, torch.int8: 1, torch.uint8: 1}


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


# ---- config --------------------------------------------------------------------------------------------------

def compose_config(overrides: list[str]) -> DictConfig:
    """The run config harness.run would compose for these overrides, through the same override check
    (harness/preflight.py), so the estimator accepts exactly what a run accepts."""
    from harness.config import with_single_budget
    from harness.preflight import compose_checked

    return compose_checked(with_single_budget(list(overrides)))


def effective(cfg: DictConfig) -> dict[str, Any]:
    """harness.config's effective config (ignored axes nulled, precision resolved), with the value checks that
    need no model or network."""
    from harness.config import positive_int, check_budget, effective_config
    from harness.training_budget import planned_steps

    if cfg.method.get("has_rank", False):
        positive_int(cfg.r, "r", "e.g. r=16")
    for key in ("batch_size", "grad_accum", "max_seq_len"):
        positive_int(cfg.train[key], f"train.{key}", f"e.g. train.{key}=8")
    check_budget(cfg.train)
    if cfg.model.source == "hf":  # config.json alone: the estimate needs no weights
        from harness.hf_model import check_model

        check_model(cfg.model.get("path"), need_weights=False, need_kind=OmegaConf.is_interpolation(cfg.model, "kind"))
    eff = effective_config(cfg)
    # several GPUs: the estimate is one GPU's share (a run's identity carries the launched world size instead)
    gpus = cfg.dist.gpus
    if gpus is None and cfg.dist.strategy not in ("none", "ddp"):
        raise ConfigError(f"dist={cfg.dist.strategy}: say over how many GPUs it shards, e.g. dist.gpus=8")
    positive_int(gpus or 1, "dist.gpus", "e.g. dist.gpus=8")
    eff["dist"] = {"strategy": str(cfg.dist.strategy), "gpus": int(gpus or 1)}
    # an epoch budget counts steps over task.n_train rows (the task's pool may hold fewer)
    eff["train"]["max_steps"] = planned_steps(cfg.train, int(cfg.task.n_train))
    return eff


# ---- the meta-device model -----------------------------------------------------------------------------------

def hf_config(model_cfg: dict[str, Any], cache: Path | None = None):
    """The transformers config of a model preset: `hf_config` in its yaml, a tiny model's `architecture`, a bundled
    model's local config.json, or a hub preset's locally cached config; model=hf: its folder's config.json (or the
    hub id's, cached)."""
    from transformers import AutoConfig

    if model_cfg.get("hf_config"):
        return AutoConfig.for_model(**dict(model_cfg["hf_config"]))
    if model_cfg.get("source") == "hf":
        from harness.hf_model import read_config

        return read_config(model_cfg["path"])
    if model_cfg.get("source") == "tiny":
        from harness.assets import cache_dir
        from harness.models import load_tokenizer

        tokenizer = load_tokenizer(OmegaConf.create(model_cfg), cache or cache_dir())
        return AutoConfig.for_model(vocab_size=len(tokenizer), pad_token_id=tokenizer.pad_token_id,
                                    **dict(model_cfg["architecture"]))
    if model_cfg.get("source") == "bundled":
        from harness.assets import bundled_model_dir, cache_dir

        return AutoConfig.from_pretrained(bundled_model_dir(OmegaConf.create(model_cfg), cache or cache_dir()))
    try:
        return AutoConfig.from_pretrained(model_cfg["hub_id"])
    except OSError:
        raise ConfigError(
            f"model '{model_cfg['name']}' has no `hf_config:` in conf/model/{model_cfg['name']}.yaml and its config is "
            f"not in the local HF cache; copy the values of its config.json there"
        ) from None


def task_labels(task_cfg: dict[str, Any], cache: Path | None = None) -> list[str] | None:
    """The task's classes (the head's size): the builtin set, or read from the user's training rows."""
    from harness.assets import cache_dir
    from harness.tasks import get_task

    return get_task(OmegaConf.create(task_cfg), cache or cache_dir()).labels


def build_meta_model(eff: dict[str, Any], cache: Path | None = None) -> nn.Module:
    """The model as harness.models.load_model builds it (dtype from the precision; a fresh classification head
    for encoders), on the meta device: shapes and dtypes, no storage."""
    from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification

    from harness.models import WEIGHT_DTYPES

    model_cfg = eff["model"]
    config = hf_config(model_cfg, cache)
    dtype = WEIGHT_DTYPES[eff["train"]["precision"]]
    quant = eff["method"].get("quantization") or {}
    if quant:  # bitsandbytes: unquantised parts load in the compute dtype
        dtype = getattr(torch, str(quant.get("bnb_4bit_compute_dtype", "bfloat16")).removeprefix("torch."))
    if model_cfg["kind"] == "encoder":
        labels = task_labels(eff["task"], cache) or ["0", "1"]
        config.num_labels = len(labels)
        config.id2label = dict(enumerate(labels))
        config.label2id = {label: i for i, label in enumerate(labels)}
        auto = AutoModelForSequenceClassification
    else:
        auto = AutoModelForCausalLM
    with torch.device("meta"):
        return auto.from_config(config, dtype=dtype)


def _is_head(name: str) -> bool:
    return any(part in HEAD_NAMES for part in name.split("."))


def quantized_weights(model: nn.Module, quant: dict[str, Any]) -> dict[int, int]:
    """id(weight) -> bytes for every linear bitsandbytes would quantise (all but the output / classification
    heads, which transformers keeps in full precision)."""
    out = {}
    for name, module in model.named_modules():
        if isinstance(module, nn.Linear) and not _is_head(name):
            n = module.weight.numel()
            if quant.get("load_in_4bit"):
                out[id(module.weight)] = em.nf4_bytes(n, bool(quant.get("bnb_4bit_use_double_quant")))
            elif quant.get("load_in_8bit"):
                out[id(module.weight)] = em.int8_bytes(n, module.out_features)
    return out


def prepare_model(eff: dict[str, Any], cache: Path | None = None) -> tuple[nn.Module, dict[int, int], Any]:
    """Meta model with the method applied through harness.methods (peft on the meta device)."""
    from harness.methods import apply_method, plan_method

    model = build_meta_model(eff, cache)
    quant = eff["method"].get("quantization") or {}
    qbytes = quantized_weights(model, quant) if quant else {}
    if quant:  # what peft.prepare_model_for_kbit_training (harness.methods.apply_method) does to the rest
        for p in model.parameters():
            p.requires_grad_(False)
            if id(p) not in qbytes and p.dtype in (torch.float16, torch.bfloat16):
                p.data = p.data.to(torch.float32)
    kwargs = dict(eff["method"].get("peft_kwargs") or {})
    if isinstance(kwargs.get("init_lora_weights"), str):
        # data-dependent inits (PiSSA, OLoRA, ...) need real weights; shapes and counts are those of the plain init
        eff = {**eff, "method": {**eff["method"], "peft_kwargs": {**kwargs, "init_lora_weights": True}}}
    # the optimizer changes nothing in the plan, and a paged (CUDA-only) one must not stop a CPU-side estimate
    plan = plan_method(model, {**eff, "train": {**eff["train"], "optim": "adamw_torch"}}, eff["model"]["kind"])
    try:
        return apply_method(model, plan), qbytes, plan
    except (RuntimeError, ValueError, TypeError, NotImplementedError) as err:
        raise ConfigError(f"method={eff['method']['name']} cannot be applied on the meta device: "
                          f"{str(err).splitlines()[0][:200]}") from None


# ---- reading the model ---------------------------------------------------------------------------------------

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


def layer_block(layer: nn.Module, config: Any, dt: em.ActDtypes, device: str) -> em.Block:
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
    return em.Block(
        hidden=config.hidden_size, intermediate=config.intermediate_size, heads=heads,
        head_dim=getattr(config, "head_dim", None) or config.hidden_size // heads,
        kv_heads=getattr(config, "num_key_value_heads", None) or heads, gated_mlp="gate" in roles,
        rms_norm=any("RMS" in type(m).__name__ for m in norms),
        attn=attn, attn_dropout=attn_dropout, attn_core_bytes=core,
        hidden_dropout=float(getattr(config, "hidden_dropout_prob", 0.0) or 0.0),
        trainable=frozenset(trainable), norms_trainable=any(p.requires_grad for m in norms for p in m.parameters()),
        adapters=tuple(adapters),
    )


def act_dtypes(precision: str, quantized: bool, device: str, causal: bool = True) -> em.ActDtypes:
    """Saved-tensor dtypes per precision. A k-bit-prepared model runs float32 between its 4-bit linears
    (bitsandbytes returns the input's dtype, and the embeddings were upcast), so its activations are float32.
    Causal LMs keep a padding mask per layer in the weights' dtype (seen in autograd's saved tensors)."""
    cuda = device == "cuda"
    if quantized or precision == "fp32":
        return em.ActDtypes(a=4, res=4, mask_cuda=cuda, attn_mask=4 if causal else 0)
    if precision.endswith("-mixed"):
        return em.ActDtypes(a=2, res=4, mask_cuda=cuda, mixed=True, attn_mask=4 if causal else 0)
    return em.ActDtypes(a=2, res=2, mask_cuda=cuda, attn_mask=2 if causal else 0)


def _tensor(p: torch.Tensor) -> em.Tensor:
    return em.Tensor(p.numel(), DTYPE_BYTES[p.dtype], tuple(p.shape))


# ---- the estimate --------------------------------------------------------------------------------------------

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


def packed_rows(model: nn.Module, batch_shape: dict[str, Any], device: str) -> tuple[int, int, bool] | None:
    """(rows, longest row, eager) when a recorded batch was flattened and its attention ran per example through
    harness.training.packed_attention (eager on a CPU for short rows); None otherwise."""
    from harness.training import packed_rows_run_eager, packs_with_own_attention

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
    head = em.Head(vocab=config.vocab_size if eff["model"]["kind"] == "causal_lm" else 0,
                   head_trainable=bool(out_emb is not None and out_emb.weight.requires_grad),
                   logits_bytes=2 if mixed else DTYPE_BYTES.get(logits_dtype, 4), positions=logit_positions)
    return em.activation_bytes(blocks, head, s, b, dt, bool(train.get("gradient_checkpointing")), packed)


def estimate_model(model: nn.Module, eff: dict[str, Any], qbytes: dict[int, int], *, device: str = "cuda",
                   seq_len: int | None = None, tokens_per_s: float | None = None, price_per_hour: float = 2.0,
                   gpu_tflops: float = 989.0, mfu: float = 0.35, cpu_runtime_bytes: int = CPU_RUNTIME_BYTES,
                   batch_shape: dict[str, int] | None = None) -> Estimate:
    """The estimate for a model that already has its method applied (meta device or real)."""
    from harness.methods import count_parameters

    train, method = eff["train"], eff["method"]
    optim = str(train.get("optim", "adamw_torch"))
    total, trainable = count_parameters(model)
    quant = method.get("quantization") or None
    params = list(model.named_parameters())  # shared (tied) parameters appear once
    weights_detail = _weight_bytes(params, qbytes, quant)
    train_tensors = [_tensor(p) for _, p in params if p.requires_grad]
    mixed = train["precision"].endswith("-mixed")
    # autocast casts every float32 linear weight to 16 bits once per forward and keeps it for the backward
    autocast = sum(2 * m.weight.numel() for m in model.modules()
                   if mixed and isinstance(m, nn.Linear) and m.weight.dtype == torch.float32)
    out_emb = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    first_grad = (out_emb.weight.numel() * DTYPE_BYTES[out_emb.weight.dtype]
                  if out_emb is not None and out_emb.weight.requires_grad else 0)
    s, b = int(seq_len or train["max_seq_len"]), int(train["batch_size"])
    notes: list[str] = []
    checkpointing = bool(train.get("gradient_checkpointing"))
    s, acts = _activations(model, eff, s, b, device, batch_shape, notes)
    if device == "cuda":
        overhead, overhead_note = CUDA_CONTEXT_BYTES, "CUDA context (assumed 0.5 GiB; not in torch's allocated figure)"
    else:
        overhead, overhead_note = cpu_runtime_bytes, "process runtime: Python, torch, transformers, tokenizer, data (measured RSS)"
    memory = em.Memory(
        weights=sum(weights_detail.values()), weights_detail=weights_detail, autocast_copies=autocast,
        gradients=sum(t.numel * t.bytes_per_el for t in train_tensors),
        optimizer=em.optimizer_state_bytes(optim, train_tensors),
        optimizer_step_temp=em.optimizer_step_temp_bytes(optim, train_tensors, device),
        activations=sum(acts.values()), activations_detail=acts, first_gradient=first_grad,
        overhead=overhead, overhead_note=overhead_note, paged_optimizer=em.OPTIMIZERS[optim][2],
        method_state=em.adalora_state_bytes([_tensor(p) for n, p in params if p.requires_grad and "lora_" in n])
        if method.get("peft_type") == "ADALORA" else 0,
    )
    dist = eff.get("dist")
    if dist:  # one GPU's share (per_gpu leaves a one-GPU run as it is)
        memory = em.per_gpu(memory, dist["strategy"] if dist["strategy"] != "none" else "ddp",
                            int(dist.get("gpus") or dist.get("world_size") or 1), *_largest_unit(model))
        notes.extend(memory.notes)
    if memory.paged_optimizer:
        notes.append("paged optimizer: states sit in CUDA unified memory (not in torch's allocated figure) and move "
                     "to host RAM under pressure")
    full = method.get("peft_type") is None
    disk = em.checkpoint_bytes([_tensor(p) for _, p in params] if full else train_tensors, adapter=not full)
    tokens = int(train["max_steps"]) * b * int(train.get("grad_accum", 1)) * s
    if tokens_per_s is None:
        flops = em.train_flops_per_token(total, trainable, full, checkpointing)
        tokens_per_s = gpu_tflops * 1e12 * mfu / flops
        notes.append(f"throughput assumed: {gpu_tflops:g} TFLOP/s x {mfu:g} utilisation / {flops / 1e9:.1f} GFLOP per token")
    cost = em.run_cost(tokens, tokens_per_s, price_per_hour) | {"price_per_hour": price_per_hour}
    qrec = None
    if quant:
        qrec = {"bits": 4 if quant.get("load_in_4bit") else 8, "quant_type": quant.get("bnb_4bit_quant_type"),
                "double_quant": bool(quant.get("bnb_4bit_use_double_quant")), "quantized_linear": len(qbytes)}
    return Estimate(
        model=eff["model"]["name"], method=method["name"], r=eff.get("r"),
        targets=(eff.get("targets") or {}).get("name"), precision=train["precision"], optim=optim, seq_len=s,
        batch_size=b, checkpointing=checkpointing, device=device, params_total=total, params_trainable=trainable,
        memory=memory, disk_bytes=disk, cost=cost, quantization=qrec, notes=notes,
    )


def _weight_bytes(params: list[tuple[str, nn.Parameter]], qbytes: dict[int, int], quant: dict[str, Any] | None
                  ) -> dict[str, int]:
    """Weight bytes by storage: quantised (nf4 / int8, +dq) or dtype, trainable or frozen."""
    detail: dict[str, int] = {}
    for _, p in params:
        if id(p) in qbytes:
            key = ("nf4" if quant.get("load_in_4bit") else "int8") + ("+dq" if quant.get("bnb_4bit_use_double_quant") else "")
            detail[key] = detail.get(key, 0) + qbytes[id(p)]
        else:
            key = str(p.dtype).removeprefix("torch.") + (" trainable" if p.requires_grad else " frozen")
            detail[key] = detail.get(key, 0) + p.numel() * DTYPE_BYTES[p.dtype]
    return detail


def _activations(model: nn.Module, eff: dict[str, Any], s: int, b: int, device: str,
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


def method_names() -> list[str]:
    from harness.config import group_options

    return group_options("method")
