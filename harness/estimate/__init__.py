"""Memory, disk and cost of a fine-tuning run, for any model size, without downloading weights.

    python -m harness.estimate model=llama-3.1-8b method=qlora r=16 targets=qv
    python -m harness.estimate model=llama-3.1-8b --table          # every method in conf/method side by side
    python -m harness.estimate --check runs/                       # predicted vs measured peak, every run there

    from harness.estimate import estimate_overrides
    est = estimate_overrides(["model=llama-3.1-8b", "method=lora", "r=16"])   # an Estimate

- model.py: the model on the meta device, the method applied with peft, the counts read off it (`estimate`);
- memory.py: the arithmetic, pure functions of those counts, with its sources;
- check.py: predicted vs measured for finished runs;
- report.py: printing; cli.py: the command line.
"""

from harness.estimate.model import Estimate, estimate, estimate_overrides

__all__ = ["Estimate", "estimate", "estimate_overrides"]
