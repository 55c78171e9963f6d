"""Quantised bases (QLoRA): the bitsandbytes config a model loads with, and the record of what was quantised.

A method file's `quantization` keys become transformers' `BitsAndBytesConfig` (`quantization_config`), with the
heads kept out so they stay trainable and in full precision; `quantization_record` is result.json's
`quantization`. harness/methods.py applies and reloads adapters on such a base (`is_quantized`).
"""

from __future__ import annotations

from typing import Any

from torch import nn
from transformers import PreTrainedModel

from harness.models import HEAD_NAMES


def quantization_config(eff: dict[str, Any]) -> Any:
    """The bitsandbytes config a quantised-base method (QLoRA) loads its model with; None for the rest."""
    spec = eff["method"].get("quantization")
    if not spec:
        return None
    from transformers import BitsAndBytesConfig

    # Heads stay unquantised and trainable. transformers' default skips the output embeddings and the "last
    # module", which for a classifier finds `classifier.bias` and so quantises the classification head.
    spec = {"llm_int8_skip_modules": list(HEAD_NAMES), **spec}
    return BitsAndBytesConfig(**spec)


def is_quantized(model: nn.Module) -> bool:
    return bool(getattr(model, "is_loaded_in_4bit", False) or getattr(model, "is_loaded_in_8bit", False))


def quantization_record(model: PreTrainedModel) -> dict[str, Any] | None:
    """What was quantised and how (result.json `quantization`); None for an unquantised base."""
    if not is_quantized(model):
        return None
    import bitsandbytes as bnb

    qcfg = model.config.quantization_config
    qcfg = qcfg.to_dict() if hasattr(qcfg, "to_dict") else dict(qcfg)
    linear = [(n, m) for n, m in model.named_modules() if isinstance(m, nn.Linear)]
    quantized = [n for n, m in linear if isinstance(m, (bnb.nn.Linear4bit, bnb.nn.Linear8bitLt))]
    other_dtypes = sorted({str(p.dtype).removeprefix("torch.") for n, p in model.named_parameters()
                           if not isinstance(p, (bnb.nn.Params4bit, bnb.nn.Int8Params))})
    return {
        "backend": f"bitsandbytes {bnb.__version__}",
        "bits": 4 if qcfg.get("load_in_4bit") else 8,
        "quant_type": qcfg.get("bnb_4bit_quant_type"),
        "double_quant": qcfg.get("bnb_4bit_use_double_quant"),
        "compute_dtype": str(qcfg.get("bnb_4bit_compute_dtype")).removeprefix("torch."),
        "quantized_linear": len(quantized),
        "unquantized_linear": [n for n, m in linear if n not in set(quantized)],  # heads stay in full precision
        "unquantized_dtypes": other_dtypes,  # embeddings, norms, heads as loaded (k-bit preparation upcasts them)
    }
