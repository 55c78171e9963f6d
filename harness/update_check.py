"""Did training really happen? The silent failure peer tools report most: a run that finishes, scores, saves, and
never trained some of what it was meant to train (LoRA's B stuck at zero, an adapter left frozen, a head outside
the optimizer).

`UpdateCheck` watches every trainable tensor: at each optimizer step, after clipping, whether its gradient is
finite and non-zero; after training, whether it differs from where it started. The record gets, per parameter
group (the name with layer numbers replaced by `*`), the gradient norm seen and the relative change; a run in which
any trainable tensor never got a gradient or never moved ends `failed`, naming the tensors.

The start is kept as a float64 (sum, sum of squares) per tensor, which any change of an element changes, plus a
copy of the tensors themselves (in their own dtype, on the CPU) when they total at most COPY_LIMIT bytes, which
gives ||W - W0|| / ||W0||. Larger trainable sets (full fine-tuning) get the moved / not-moved check without the
relative change: a copy would add its size to the peak memory the run measures (resident memory on CPU).
"""

from __future__ import annotations

import math
import re
from collections import defaultdict
from typing import Any

import torch
from transformers import TrainerCallback

COPY_LIMIT = 64 << 20  # bytes of trainable tensors copied for the relative change (adapters; not full FT)
LAYER_NUMBER = re.compile(r"\.\d+(?=\.)")
NAMES_SHOWN = 5


def group_of(name: str) -> str:
    """`base_model.model.model.layers.3.self_attn.q_proj.lora_A.default.weight` -> `...layers.*.self_attn...`"""
    return LAYER_NUMBER.sub(".*", name)


@torch.no_grad()
def _moments(t: torch.Tensor) -> tuple[float, float]:
    """(sum, sum of squares) accumulated in float64 without a float64 copy of the tensor (a 7B model's
    embedding would need a gigabyte)."""
    x = t.detach()
    return float(x.sum(dtype=torch.float64)), float(torch.linalg.vector_norm(x, dtype=torch.float64) ** 2)


class UpdateCheck(TrainerCallback):
    """Created before `Trainer.train` with the model whose trainable tensors it checks."""

    def __init__(self, model: torch.nn.Module) -> None:
        self.params = {n: p for n, p in model.named_parameters() if p.requires_grad}
        self.start = {n: _moments(p) for n, p in self.params.items()}
        size = sum(p.numel() * p.element_size() for p in self.params.values())
        self.initial = ({n: p.detach().to("cpu", copy=True) for n, p in self.params.items()}
                        if size <= COPY_LIMIT else None)
        self.got_grad: torch.Tensor | None = None   # per tensor: finite non-zero gradient at some step
        self.norm_sum: torch.Tensor | None = None   # per tensor: sum over steps of the gradient norm squared
        self.norm_max: torch.Tensor | None = None
        self.steps = 0

    def on_pre_optimizer_step(self, args, state, control, **kwargs):
        grads = [p.grad for p in self.params.values()]
        have = [g is not None for g in grads]
        present = [g.detach() for g in grads if g is not None]
        norms = torch.zeros(len(grads), dtype=torch.float32)
        if present:  # one fused kernel and one device sync per step
            found = torch.stack(torch._foreach_norm(present)).float().cpu()
            norms[torch.tensor(have)] = found
        ok = torch.isfinite(norms) & (norms > 0)
        if self.got_grad is None:
            self.got_grad = ok.clone()
            self.norm_sum, self.norm_max = torch.zeros(len(grads), dtype=torch.float64), torch.zeros_like(norms)
        self.got_grad |= ok
        finite = torch.where(torch.isfinite(norms), norms, torch.zeros_like(norms))
        self.norm_sum += finite.double() ** 2
        self.norm_max = torch.maximum(self.norm_max, finite)
        self.steps += 1

    def report(self) -> tuple[dict[str, Any], list[str]]:
        """(the record's `update_check`, names of the tensors that did not train). Call after training."""
        names = list(self.params)
        got = self.got_grad.tolist() if self.got_grad is not None else [False] * len(names)
        moved = {n: _moments(p) != self.start[n] for n, p in self.params.items()}
        groups: dict[str, dict[str, Any]] = defaultdict(lambda: {"tensors": 0, "moved": 0, "with_grad": 0,
                                                                 "_sq": 0.0, "_max": 0.0, "_d2": 0.0, "_w2": 0.0})
        for i, n in enumerate(names):
            g = groups[group_of(n)]
            g["tensors"] += 1
            g["moved"] += moved[n]
            g["with_grad"] += got[i]
            if self.norm_sum is not None:
                g["_sq"] += float(self.norm_sum[i])
                g["_max"] = max(g["_max"], float(self.norm_max[i]))
            if self.initial is not None:
                w0 = self.initial[n].double()
                g["_d2"] += float(((self.params[n].detach().cpu().double() - w0) ** 2).sum())
                g["_w2"] += float((w0 * w0).sum())
        out = {}
        for name, g in groups.items():
            steps = max(self.steps, 1)
            out[name] = {"tensors": g["tensors"], "with_grad": g["with_grad"], "moved": g["moved"],
                         # root-mean-square over steps of the group's gradient norm, and its largest tensor norm
                         "grad_norm": math.sqrt(g["_sq"] / steps), "grad_norm_max_tensor": g["_max"],
                         "change_norm": math.sqrt(g["_d2"]) if self.initial is not None else None,
                         "rel_change": (math.sqrt(g["_d2"] / g["_w2"]) if self.initial is not None and g["_w2"] > 0
                                        else None)}  # None: started at zero (LoRA's B) or not copied
        # a run resumed after its last step took no step here: only the change since the start is checked
        stuck = [n for i, n in enumerate(names) if (self.steps and not got[i]) or not moved[n]]
        return {"steps": self.steps, "tensors": len(names), "relative_change_kept": self.initial is not None,
                "groups": out, "not_trained": stuck}, stuck


def stuck_reason(stuck: list[str], record: dict[str, Any]) -> str:
    """One line naming what did not train."""
    shown = ", ".join(stuck[:NAMES_SHOWN]) + (f" and {len(stuck) - NAMES_SHOWN} more" if len(stuck) > NAMES_SHOWN else "")
    return (f"{len(stuck)} of {record['tensors']} trainable tensors never got a non-zero gradient or never "
            f"changed: {shown}")
