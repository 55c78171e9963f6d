"""peft-harness: measure when parameter-efficient fine-tuning matches full fine-tuning, and what it costs.

    make run                                   # set-up + one default run on a bundled model
    python -m harness.run method=lora r=16     # one run, any Hydra override
"""

__version__ = "0.1.0"

import logging as _logging

# bitsandbytes warns on import that an optional CPU kernel package (fetched from the hub) is missing, and the
# `kernels` package it asks warns that it skips the hub's publisher check offline: both on every run, even when
# nothing is quantised (peft imports bitsandbytes), and neither changes what a run computes.
_logging.getLogger("bitsandbytes").setLevel(_logging.ERROR)
_logging.getLogger("kernels").setLevel(_logging.ERROR)

import warnings as _warnings

# Deprecation chatter from transformers internals, and torch's note that pinned memory needs an accelerator: set
# here, once, for every entry point (runs, sweeps, merge, serve_bench, the estimator), none of which acts on them.
_warnings.filterwarnings("ignore", category=FutureWarning, module="transformers")
_warnings.filterwarnings("ignore", message=".*pin_memory.*no accelerator.*")
