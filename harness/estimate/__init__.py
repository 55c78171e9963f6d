"""Memory, disk and cost of a fine-tuning run, for any model size, without downloading weights.

    python -m harness.estimate model=llama-3.1-8b method=qlora r=16 targets=qv
    python -m harness.estimate model=llama-3.1-8b --table          # every method in conf/method side by side
    python -m harness.estimate --check runs/                       # predicted vs measured peak, every run there

    from harness.estimate import estimate_overrides
    est = estimate_overrides(["model=llama-3.1-8b", "method=lora", "r=16"])   # an Estimate

- model.py: the estimate itself (`estimate`): the counts read off the model through the arithmetic;
- run_config.py: the run config from harness.run's overrides, through the same checks;
- meta_model.py: the model on the meta device, the method applied with peft;
- model_weights.py, model_activations.py: the counts read off it (parameters by dtype; each layer's terms);
- memory.py, activation_memory.py: the arithmetic, pure functions of those counts, with its sources;
- check.py: predicted vs measured for finished runs;
- report.py: printing; cli.py: the command line.
"""

from harness.estimate.model import Estimate, estimate, estimate_overrides

__all__ = ["Estimate", "estimate", "estimate_overrides"]
