"""Did training really happen? The silent failure peer tools report most: a run that finishes, scores, saves, and
never trained some of what it was meant to train (LoRA's B stuck at zero, an adapter left frozen, a head outside
the optimizer).

`UpdateCheck` watches every trainable tensor: at each optimizer step, after clipping, whether its gradient is
finite and non-zero, and the learning rate its optimizer group steps with; after training, whether it differs from
where it started, and whether each adapted layer's effective update (peft's `get_delta_weight`, B @ A for LoRA)
differs from its start. The record gets, per parameter group (the name with layer numbers replaced by `*`), the
gradient norm seen and the relative change.

A tensor is *required* to have moved only where the method's structure (`METHODS`) and the schedule say it must:
a tensor without a listed dependency from the first step with a positive rate; one that waits for a zero-initialised
factor (LoRA's A waits for B: A's gradient is B^T dL/dh, zero while B is) only from the first positive-rate step
after that factor first moved. A step inside the warm-up whose rate is 0 does not count; a zero rate after the
warm-up does (a schedule that never reaches a positive rate is a frozen run, not a short one). The verdict:

- `ok`: every trainable tensor moved (and every required effective update);
- `too_short`: everything required moved, but the run ended before some tensor was due (a 1-step run under
  warm-up, a 2-step LoRA run before A is due); the run ends `ok`;
- `failed`: a required tensor or effective update did not move, a tensor of the method is frozen, or nothing is
  trainable; the run ends `failed`, naming the tensors.

The start is kept as a float64 (sum, sum of squares) per tensor, which any change of an element changes, plus a
copy of the tensors themselves (in their own dtype, on the CPU) when they total at most COPY_LIMIT bytes, which
gives ||W - W0|| / ||W0||. Larger trainable sets (full fine-tuning) get the moved / not-moved check without the
relative change: a copy would add its size to the peak memory the run measures (resident memory on CPU).
"""

from __future__ import annotations

import math
import re
from collections import defaultdict
from dataclasses import dataclass, field
from typing import Any

import torch
from transformers import TrainerCallback

COPY_LIMIT = 64 << 20  # bytes of trainable tensors copied for the relative change (adapters; not full FT)
LAYER_NUMBER = re.compile(r"\.\d+(?=\.)")
NAMES_SHOWN = 5
NOT_DUE_SHOWN = 20  # a 1-step full fine-tune has every weight not yet due: the record keeps the first names


@dataclass(frozen=True)
class Structure:
    """What a method trains and in which order its tensors can first move (peft 0.21's initialisations)."""

    tensors: tuple[str, ...]  # name components of the tensors it adds; () = every weight (full fine-tuning)
    # tensor component -> the zero-initialised factor(s) (first that exists in the same module) it waits for
    after: dict[str, tuple[str, ...]] = field(default_factory=dict)
    why: str = ""


_LORA = Structure(("lora_A", "lora_B"), {"lora_A": ("lora_B",)},
                  "B starts at zero, A random: A's gradient B^T dL/dh is zero until B has moved")
_LOKR_W1 = ("lokr_w1", "lokr_w1_a")
# One entry per file of conf/method/ (tests/test_update_check.py fails on a method without one). A dict here
# rather than a key of each method file: a method file's keys are part of the run's effective config and so of its
# identity hash, which this knowledge of peft's tensor names must not change; it is read with peft's names, here.
METHODS: dict[str, Structure] = {
    "full": Structure((), {}, "every weight is non-zero and gets a gradient from the first step"),
    "lora": _LORA,
    "rslora": _LORA,   # the scale alpha/sqrt(r) changes no initialisation
    "qlora": _LORA,    # LoRA on a 4-bit base
    "dora": Structure(("lora_A", "lora_B", "lora_magnitude_vector"), {"lora_A": ("lora_B",)},
                      "LoRA's B=0 order; the magnitude (initialised to the weight's row norms) moves from step 1"),
    "pissa": Structure(("lora_A", "lora_B"), {},
                       "both factors start from the top singular vectors, non-zero: both move from step 1"),
    "adalora": Structure(("lora_A", "lora_B", "lora_E"), {"lora_A": ("lora_E",), "lora_B": ("lora_E",)},
                         "E (the singular values) starts at zero, A and B random: the task's gradient reaches A and "
                         "B once E has moved (the orthogonality penalty may move them earlier); a module whose "
                         "budget pruned every rank keeps E and its update at zero"),
    "loha": Structure(("hada_w1_a", "hada_w1_b", "hada_w2_a", "hada_w2_b"),
                      {"hada_w1_a": ("hada_w2_b",), "hada_w1_b": ("hada_w2_b",), "hada_w2_a": ("hada_w2_b",)},
                      "w2_b starts at zero: (w1_a w1_b) * (w2_a w2_b) gives the others a gradient only after it moved"),
    "lokr": Structure(("lokr_w1", "lokr_w1_a", "lokr_w1_b", "lokr_w2", "lokr_w2_a", "lokr_w2_b"),
                      {"lokr_w1_b": ("lokr_w1_a",), "lokr_w2": _LOKR_W1, "lokr_w2_a": _LOKR_W1, "lokr_w2_b": _LOKR_W1},
                      "w1 (or w1_a when decomposed) starts at zero: kron(w1, w2) gives w2 a gradient only after it"),
    "vera": Structure(("vera_lambda_b", "vera_lambda_d"), {"vera_lambda_d": ("vera_lambda_b",)},
                      "lambda_b starts at zero, lambda_d at d_initial: lambda_d's gradient waits for lambda_b"),
    "ia3": Structure(("ia3_l",), {}, "the scaling vectors start at 1: a gradient from step 1"),
    "prefix": Structure(("prompt_encoder",), {}, "the prefix embeddings are trained directly, random init"),
    "prompt": Structure(("prompt_encoder",), {}, "the soft-prompt embeddings are trained directly, random init"),
}
# A method without an entry (a user's new method file): every trainable tensor is due from the first
# positive-rate step, the strictest reading (a 2-step run of a B=0 method then fails; add an entry).
STRICT = Structure((), {}, "no entry in harness/update_check.py METHODS: every tensor due from the first step")


def group_of(name: str) -> str:
    """`base_model.model.model.layers.3.self_attn.q_proj.lora_A.default.weight` -> `...layers.*.self_attn...`"""
    return LAYER_NUMBER.sub(".*", name)


@torch.no_grad()
def _moments(t: torch.Tensor) -> tuple[float, float]:
    """(sum, sum of squares) accumulated in float64 without a float64 copy of the tensor (a 7B model's
    embedding would need a gigabyte)."""
    x = t.detach()
    return float(x.sum(dtype=torch.float64)), float(torch.linalg.vector_norm(x, dtype=torch.float64) ** 2)


def _dependency(name: str, structure: Structure, names: set[str]) -> str | None:
    """The trainable tensor `name` waits for (same module, the listed zero factor), or None."""
    parts = name.split(".")
    for i, part in enumerate(parts):
        for factor in structure.after.get(part, ()):
            candidate = ".".join(parts[:i] + [factor] + parts[i + 1:])
            if candidate in names:
                return candidate
    return None


def _adapted_layers(model: torch.nn.Module) -> dict[str, torch.nn.Module]:
    """peft layers whose effective update peft can compute (LoRA family, LoHa, LoKr, VeRA, AdaLoRA)."""
    try:
        from peft.tuners.tuners_utils import BaseTunerLayer
    except ImportError:  # pragma: no cover - peft is a dependency
        return {}
    return {n: m for n, m in model.named_modules()
            if isinstance(m, BaseTunerLayer) and hasattr(m, "get_delta_weight") and "default" in m.active_adapters}


@torch.no_grad()
def _delta_moments(layer: torch.nn.Module) -> tuple[float, float] | None:
    try:
        return _moments(layer.get_delta_weight("default"))
    except Exception:  # noqa: BLE001 - a sharded (FSDP) or exotic layer: the per-tensor check still holds
        return None


def _pruned_modules(model: torch.nn.Module) -> set[str]:
    """AdaLoRA: the modules whose budget kept no rank (peft's rank_pattern keys are lora_E names)."""
    config = (getattr(model, "peft_config", None) or {}).get("default")
    pattern = getattr(config, "rank_pattern", None) or {}
    return {key.rsplit(".lora_E", 1)[0] for key, kept in pattern.items() if not any(kept)}


def _in(module: str, names: set[str]) -> bool:
    """`module` (a name under the peft wrapper) is one of `names` (names under the wrapped model)."""
    return any(module == m or module.endswith("." + m) for m in names)


class UpdateCheck(TrainerCallback):
    """Created before `Trainer.train` with the model whose trainable tensors it checks and the method's name
    (a key of METHODS)."""

    def __init__(self, model: torch.nn.Module, method: str | None = None) -> None:
        self.model = model
        self.method = method
        self.structure = METHODS.get(method, STRICT) if method is not None else STRICT
        self.params = {n: p for n, p in model.named_parameters() if p.requires_grad}
        self.frozen = [n for n, p in model.named_parameters()
                       if not p.requires_grad and set(n.split(".")) & set(self.structure.tensors)]
        self.depends = {n: _dependency(n, self.structure, set(self.params)) for n in self.params}
        self.start = {n: _moments(p) for n, p in self.params.items()}
        size = sum(p.numel() * p.element_size() for p in self.params.values())
        self.initial = ({n: p.detach().to("cpu", copy=True) for n, p in self.params.items()}
                        if size <= COPY_LIMIT else None)
        self.layers = _adapted_layers(model)
        self.delta_start = {n: _delta_moments(m) for n, m in self.layers.items()}
        self.got_grad: torch.Tensor | None = None   # per tensor: finite non-zero gradient at some step
        self.norm_sum: torch.Tensor | None = None   # per tensor: sum over steps of the gradient norm squared
        self.norm_max: torch.Tensor | None = None
        self.first_move: list[int | None] = [None] * len(self.params)  # per tensor: first step it really moved
        self.counted: list[list[bool]] = []  # per step, per tensor: a positive rate, or one the schedule promised
        self.warmup_steps = 0
        self.steps = 0

    def on_train_begin(self, args, state, control, **kwargs):
        self.warmup_steps = int(args.get_warmup_steps(state.max_steps)) if state.max_steps else 0

    def _step_rates(self, optimizer, step: int) -> tuple[list[bool], list[bool]]:
        """Per tensor: (does this step count: its group's rate is positive, or the step is past the warm-up,
        where the schedule promised a positive rate; did it really step: a positive rate). A tensor outside the
        optimizer gets the largest rate, as if it were in it."""
        if optimizer is None:  # unit use without a Trainer: every step counts and steps
            return [True] * len(self.params), [True] * len(self.params)
        group_lr = {id(p): float(g["lr"]) for g in optimizer.param_groups for p in g["params"]}
        top = max(group_lr.values(), default=0.0)
        positive = [group_lr.get(id(p), top) > 0 for p in self.params.values()]
        return [p or step >= self.warmup_steps for p in positive], positive

    def on_pre_optimizer_step(self, args, state, control, optimizer=None, **kwargs):
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
        step = state.global_step if state is not None else self.steps
        counts, positive = self._step_rates(optimizer, step)
        for i, (moving, stepped) in enumerate(zip(ok.tolist(), positive)):
            if moving and stepped and self.first_move[i] is None:  # a gradient, applied at a positive rate
                self.first_move[i] = len(self.counted)
        self.counted.append(counts)
        self.steps += 1

    def _due(self) -> list[bool]:
        """Per tensor: was it required to have moved by the end (see the module docstring)."""
        if not self.steps:  # a run resumed after its last step took no step here: the change since the start
            return [True] * len(self.params)
        index = {n: i for i, n in enumerate(self.params)}
        due = []
        for i, name in enumerate(self.params):
            dep = self.depends[name]
            since = 0 if dep is None else self.first_move[index[dep]]
            if dep is not None and since is not None:
                since += 1  # the step after the factor first moved
            due.append(since is not None and any(step[i] for step in self.counted[since:]))
        return due

    def report(self) -> tuple[dict[str, Any], list[str]]:
        """(the record's `update_check`, names of what did not train: tensors, `<layer> (effective update)`, or
        the reason nothing can train). Call after training."""
        names = list(self.params)
        got = self.got_grad.tolist() if self.got_grad is not None else [False] * len(names)
        moved = {n: _moments(p) != self.start[n] for n, p in self.params.items()}
        due = self._due()
        pruned = _pruned_modules(self.model)
        exempt = {n for n in names if "lora_E" in n.split(".") and _in(n.rsplit(".lora_E", 1)[0], pruned)}
        stuck = [n for i, n in enumerate(names) if due[i] and n not in exempt and not (moved[n] and (got[i] or not self.steps))]
        waiting = [n for i, n in enumerate(names) if not due[i] and not moved[n]]
        layers = self._layer_changes(names, due, pruned)
        stuck += [f"{n} (effective update)" for n, v in layers.items() if v["due"] and v["changed"] is False]
        waiting += [f"{n} (effective update)" for n, v in layers.items() if not v["due"] and not v["changed"]]
        if not names:
            stuck = ["nothing is trainable (no tensor has requires_grad)"]
        stuck = [f"{n} (frozen: requires_grad is off)" for n in self.frozen] + stuck
        verdict = "failed" if stuck else "too_short" if waiting else "ok"
        return {"steps": self.steps, "tensors": len(names), "relative_change_kept": self.initial is not None,
                "method_structure": self.method if self.method in METHODS else None,
                "verdict": verdict, "counted_steps": sum(any(s) for s in self.counted),
                "groups": self._groups(names, got, moved), "not_trained": stuck,
                "not_due": waiting[:NOT_DUE_SHOWN], "not_due_count": len(waiting),
                "effective_updates": {"layers": len(layers), "changed": sum(bool(v["changed"]) for v in layers.values()),
                                      "pruned": len(pruned)}}, stuck

    def _layer_changes(self, names: list[str], due: list[bool], pruned: set[str]) -> dict[str, dict[str, Any]]:
        """Per adapted layer: whether its effective update changed, and whether it had to (one of its tensors
        was due, and the budget did not prune it away)."""
        out = {}
        for layer_name, layer in self.layers.items():
            start = self.delta_start[layer_name]
            now = _delta_moments(layer) if start is not None else None
            own = [due[i] for i, n in enumerate(names) if n.startswith(layer_name + ".")]
            is_pruned = _in(layer_name, pruned)
            out[layer_name] = {"changed": None if now is None else now != start,
                               "due": bool(own) and any(own) and not is_pruned and now is not None}
        return out

    def _groups(self, names: list[str], got: list[bool], moved: dict[str, bool]) -> dict[str, dict[str, Any]]:
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
        steps = max(self.steps, 1)
        for name, g in groups.items():
            out[name] = {"tensors": g["tensors"], "with_grad": g["with_grad"], "moved": g["moved"],
                         # root-mean-square over steps of the group's gradient norm, and its largest tensor norm
                         "grad_norm": math.sqrt(g["_sq"] / steps), "grad_norm_max_tensor": g["_max"],
                         "change_norm": math.sqrt(g["_d2"]) if self.initial is not None else None,
                         "rel_change": (math.sqrt(g["_d2"] / g["_w2"]) if self.initial is not None and g["_w2"] > 0
                                        else None)}  # None: started at zero (LoRA's B) or not copied
        return out


def stuck_reason(stuck: list[str], record: dict[str, Any]) -> str:
    """One line naming what did not train."""
    shown = ", ".join(stuck[:NAMES_SHOWN]) + (f" and {len(stuck) - NAMES_SHOWN} more" if len(stuck) > NAMES_SHOWN else "")
    return (f"{len(stuck)} did not train where the method's structure and the schedule say they must (of "
            f"{record['tensors']} trainable tensors and {record['effective_updates']['layers']} adapted layers): {shown}")
