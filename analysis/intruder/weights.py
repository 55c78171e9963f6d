"""The two weights the intruder analysis compares, per changed matrix: W0, the base exactly as the run trained
from it, and W, the tuned model's (analysis/intruder/report.py and the causal test, analysis/intruder/scaling.py)."""

from __future__ import annotations

from typing import Any

import torch

from harness.errors import ConfigError
from harness.runfolder import RunFolder


def tuned_model(trained: RunFolder, base) -> tuple[Any, list[str]]:
    """The run's model with its changes merged into `base` in float32 (adapters merged, full FT's weights
    loaded), and the names of the linear matrices it changed. A continual stage (`init_from`) carries every
    earlier stage's change too, root first, so its W - W0 is the whole chain's (harness/lineage.py)."""
    from harness.lineage import ancestry, apply_chain

    model, names = apply_chain(base.float(), ancestry(trained.path))
    if not names:
        raise ConfigError(f"{trained.name}: method {trained.result['method']} changes no linear weight; "
                          "the intruder analysis needs a LoRA-family or full fine-tuning run")
    return model, names


def weight_pairs(run: RunFolder) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """(W0, W) per changed matrix. W0 is loaded by the same code as `harness.adapters.merge`
    (`RunFolder.load_base`): in the record's precision (a full-FT run at bf16-mixed trained float32 weights), and for
    a QLoRA run the NF4 weights it trained against, de-quantised. Adapters are merged in float32, so the merge adds
    no rounding of its own."""
    base, _, _ = run.load_base(dequantize=True)
    w0 = {n: m.weight.detach().clone() for n, m in base.named_modules() if isinstance(m, torch.nn.Linear)}
    model, names = tuned_model(run, base)
    return {n: (w0[n], model.get_submodule(n).weight.detach()) for n in names}
