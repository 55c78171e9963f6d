"""Model loading: bundled pretrained models (from the converted cache), tiny random models, hub presets, and any
model by local folder or hub id (`model=hf model.path=...`, harness/hf_model.py).

Every path ends in a transformers `from_pretrained` / `from_config`, so GPU users get the same code with
`dtype=bfloat16` and, for QLoRA, a bitsandbytes `quantization_config`.
"""

from __future__ import annotations

import functools
import hashlib
import logging
import tempfile
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig
from transformers import (
    AutoConfig,
    AutoModelForCausalLM,
    AutoModelForSequenceClassification,
    AutoTokenizer,
    PreTrainedModel,
    PreTrainedTokenizerBase,
)

from harness.assets import CONF_MODEL_DIR, bundled_model_dir
from harness.errors import AssetError
from harness.hf_model import location

log = logging.getLogger(__name__)

# "auto" is resolved per method by config.effective_config; loaded bare (e.g. a frozen base for analysis) it means bf16.
WEIGHT_DTYPES = {"auto": torch.bfloat16, "bf16": torch.bfloat16, "bf16-mixed": torch.float32, "fp32": torch.float32, "fp16-mixed": torch.float32}

HEAD_NAMES = ("lm_head", "classifier", "score")  # output heads: never adapter targets, never quantised

def model_path(model_cfg: DictConfig, cache: Path) -> str:
    """What `from_pretrained` gets: a local folder for bundled models, the hub id for hub presets, model.path
    (as an absolute folder, or the hub id) for model=hf."""
    if model_cfg.source == "bundled":
        return str(bundled_model_dir(model_cfg, cache))
    if model_cfg.source == "hub":
        return model_cfg.hub_id
    if model_cfg.source == "hf":
        return location(model_cfg.path)[0]
    raise AssetError(f"model '{model_cfg.name}' has source={model_cfg.source!r}; tiny models have no path")


def local_folder(model_cfg: DictConfig, cache: Path) -> str | None:
    """The folder a model loads from on this machine (bundled, or model=hf with a folder); None for hub ids and
    tiny random models."""
    if model_cfg.source == "bundled":
        return model_path(model_cfg, cache)
    if model_cfg.source == "hf":
        where, is_local = location(model_cfg.path)
        return where if is_local else None
    return None


def _from_hub(loader, model_cfg: DictConfig, *args, **kwargs):
    """Call a `from_pretrained` for a hub preset (or model=hf by hub id), turning "cannot reach the hub" into one
    clear line."""
    try:
        return loader(*args, **kwargs)
    except (OSError, ValueError) as err:
        from_hub = model_cfg.source == "hub" or (model_cfg.source == "hf" and not location(model_cfg.path)[1])
        if not from_hub:
            raise
        raise AssetError(
            f"model '{model_cfg.name}' ({model_path(model_cfg, Path())}) is not reachable: the hub is offline and no local "
            f"HF cache holds it; use a bundled model (model=smollm2-135m or model=minilm-l6) or set HF_HOME to "
            f"a cache that has it ({type(err).__name__})"
        ) from None


def load_tokenizer(model_cfg: DictConfig, cache: Path) -> PreTrainedTokenizerBase:
    if model_cfg.source == "tiny":
        from omegaconf import OmegaConf

        return load_tokenizer(OmegaConf.load(CONF_MODEL_DIR / f"{model_cfg.tokenizer_from}.yaml"), cache)
    path = model_path(model_cfg, cache)
    tokenizer = _from_hub(AutoTokenizer.from_pretrained, model_cfg, path)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


@functools.cache
def warn_if_bf16_is_emulated(precision: str) -> None:
    """bf16 on a CPU without native bf16 (AMX or AVX512-BF16) is emulated: a bf16 matmul measured 0.3 GFLOP/s
    against fp32's 129 on a 2-core AVX2 machine, so a run that takes minutes takes days. Said once, in one line."""
    # the check of config.native_bf16, inline: config reaches models through lineage, so importing it would be a circle
    native = torch.cuda.is_bf16_supported() if torch.cuda.is_available() else torch.ops.mkldnn._is_mkldnn_bf16_supported()
    if precision.startswith("bf16") and not native:
        log.warning("train.precision=%s without native bf16 (a CPU without AMX / AVX512-BF16, torch sees %s; or a "
                    "GPU before Ampere): bf16 "
                    "matmuls are emulated and hundreds of times slower here; set train.precision=fp32",
                    precision, torch.backends.cpu.get_cpu_capability())


def load_model(
    model_cfg: DictConfig,
    cache: Path,
    *,
    precision: str,
    tokenizer: PreTrainedTokenizerBase,
    labels: list[str] | None = None,
    quantization_config: Any = None,
) -> PreTrainedModel:
    """The model in the dtype the precision asks for; encoders get a fresh classification head over `labels`."""
    dtype = WEIGHT_DTYPES[precision]
    warn_if_bf16_is_emulated(precision)
    kwargs: dict[str, Any] = {"dtype": dtype}
    if model_cfg.kind == "encoder":
        if not labels:
            raise AssetError(f"model '{model_cfg.name}' is an encoder and needs a task with labels")
        kwargs.update(num_labels=len(labels), id2label=dict(enumerate(labels)), label2id={l: i for i, l in enumerate(labels)})
        auto = AutoModelForSequenceClassification
    else:
        auto = AutoModelForCausalLM
    if model_cfg.source == "tiny":
        config = AutoConfig.for_model(vocab_size=len(tokenizer), pad_token_id=tokenizer.pad_token_id, **model_cfg.architecture)
        for key in ("num_labels", "id2label", "label2id"):
            if key in kwargs:
                setattr(config, key, kwargs.pop(key))
        with torch.random.fork_rng():  # a tiny model is the same random model in every run
            torch.manual_seed(0)
            model = auto.from_config(config, **kwargs)
        if quantization_config is None:
            return model
        # quantisation happens in from_pretrained: round-trip the random model through a temporary folder
        with tempfile.TemporaryDirectory(prefix="harness-tiny-") as folder:
            model.save_pretrained(folder)
            return _trainable_on_cpu(auto.from_pretrained(folder, quantization_config=quantization_config, **kwargs))
    if quantization_config is not None:
        kwargs["quantization_config"] = quantization_config
    model = _from_hub(auto.from_pretrained, model_cfg, model_path(model_cfg, cache), **kwargs)
    if quantization_config is not None:
        model = _trainable_on_cpu(model)
    if model.config.pad_token_id is None:
        model.config.pad_token_id = tokenizer.pad_token_id
    return model


def _trainable_on_cpu(model: PreTrainedModel) -> PreTrainedModel:
    """Keep bitsandbytes 4-bit layers on their autograd kernel.

    bitsandbytes 0.50 repacks a Linear4bit's weight for a faster CPU kernel at its first eval-mode forward without
    gradients (e.g. the base score) and keeps using that kernel afterwards, also in training, where it passes no
    gradient back to the layer's input (adapters below it stop learning) and crashes on layers with a bias. Eval
    then uses the same dequantising kernel as training, so a reloaded adapter reproduces the run's outputs.
    """
    import bitsandbytes as bnb

    for module in model.modules():
        if isinstance(module, bnb.nn.Linear4bit):
            module.support_avx512bf16_for_cpu = False
    return model


def model_fingerprint(model_cfg: DictConfig, cache: Path, model: PreTrainedModel) -> str:
    """SHA-256 (16 hex) of the weights the run started from: weight files for stored models (cached beside the
    cache, keyed by size and mtime), the tensors themselves for tiny random models."""
    digest = hashlib.sha256()
    if model_cfg.source == "tiny":
        for name, tensor in sorted(model.state_dict().items()):
            digest.update(name.encode())
            digest.update(tensor.detach().float().cpu().numpy().tobytes())
        return digest.hexdigest()[:16]
    folder = local_folder(model_cfg, cache)
    if folder is None:  # a hub preset, or model=hf by hub id
        return f"hub:{model_path(model_cfg, cache)}@{getattr(model.config, '_commit_hash', None) or 'unknown'}"
    # a model=hf folder is keyed by where it lies too: two users' folders may share a name
    owner = model_cfg.name if model_cfg.source != "hf" else f"{model_cfg.name}-{hashlib.sha1(folder.encode()).hexdigest()[:8]}"
    for weights in sorted(Path(folder).glob("*.safetensors")) + sorted(Path(folder).glob("*.bin")):
        stat = weights.stat()
        sidecar = cache / "fingerprints" / f"{owner}-{weights.name}-{stat.st_size}-{int(stat.st_mtime)}.sha256"
        if not sidecar.exists():
            sidecar.parent.mkdir(parents=True, exist_ok=True)
            file_digest = hashlib.sha256()
            with open(weights, "rb") as fh:
                for chunk in iter(lambda: fh.read(1 << 24), b""):
                    file_digest.update(chunk)
            sidecar.write_text(file_digest.hexdigest())
        digest.update(sidecar.read_text().encode())
    return digest.hexdigest()[:16]
