"""A model's parameters as the memory arithmetic counts them: bytes per element of each torch dtype, the bytes
bitsandbytes would quantise each linear to, and the weights' bytes by storage. Shared by the meta model's
preparation (harness/estimate/meta_model.py), the activation count and the estimate itself.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from harness.estimate import memory as em
from harness.models import HEAD_NAMES

DTYPE_BYTES = {torch.float32: 4, torch.bfloat16: 2, torch.float16: 2, torch.float64: 8, torch.int8: 1, torch.uint8: 1}


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


def tensor_of(p: torch.Tensor) -> em.Tensor:
    """The arithmetic's view of one parameter: element count, bytes per element, shape."""
    return em.Tensor(p.numel(), DTYPE_BYTES[p.dtype], tuple(p.shape))


def weight_bytes(params: list[tuple[str, nn.Parameter]], qbytes: dict[int, int], quant: dict[str, Any] | None
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
