"""Training through transformers' `Trainer`: arguments from the run config, collators, divergence guard.

Speed (`make bench` measures it against a plain Trainer + peft script, benchmarks/plain_reference.py). For causal LMs:
- padding-free batches (`train.padding_free`): transformers' `DataCollatorWithFlattening` concatenates a batch
  into one row with restarting `position_ids`; with the mask left out, transformers' masking utilities detect the
  packed format and build a block-diagonal causal mask (SDPA/eager/flash), so no token attends across examples and
  no compute goes to padding. Loss and gradients equal the padded batch's up to float rounding.
- logits only where a label is (`train.labelled_logits_only`): the models' documented `logits_to_keep` (a boolean
  mask) plus `shift_labels`, so the lm_head and the float32 cross-entropy over the vocabulary run on the answer
  tokens alone instead of every position. Same loss, same gradients; a large share of a small model's step when
  the vocabulary is large (SmolLM2: 49k x 576 of 135M parameters) and the loss covers a few answer tokens.
- packed attention: transformers runs a flattened batch through SDPA with one dense block-diagonal mask over the
  whole row (n x n for n tokens: 8x the work of the examples' own triangles at batch 8, and the mask defeats the
  flash kernel). While training, attention instead lays the row out as one padded example per row and runs causal
  attention on it (harness/packed_attention.py); everything else (projections, MLP, norms) still sees no padding.
- no KV cache in training (`use_cache=False` in every batch): transformers 5 would otherwise build one each
  step, and a cache present disables the packed-sequence detection padding-free batching relies on.
All are skipped where they would be wrong: prompt-learning methods (virtual tokens change the sequence and use
peft's cache) and models whose forward lacks the arguments. Encoders keep dynamic padding.
The batch wrappers and the model checks that decide all this are in harness/training_batches.py.
"""

from __future__ import annotations

import json
import logging
import math
import shutil
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import datasets
import torch
from tqdm.auto import tqdm
from transformers import (
    DataCollatorForSeq2Seq,
    DataCollatorWithFlattening,
    DataCollatorWithPadding,
    PreTrainedModel,
    Trainer,
    TrainerCallback,
    TrainingArguments,
)
from transformers.trainer import TRAINER_STATE_NAME
from transformers.utils import logging as transformers_logging
from transformers.trainer_utils import sort_checkpoints

from harness.packed_attention import PackedAttention, packs_with_own_attention
from harness.training_batches import (BatchShapes, CausalBatches, accepts, keeps_logits, packs_correctly,
                                      uses_prompt_learning)


@dataclass
class HarnessTrainingArguments(TrainingArguments):
    """`TrainingArguments` plus the harness's batching switches (the way TRL's SFTConfig adds `padding_free`)."""

    padding_free: bool = field(default=False, metadata={"help": "Causal LMs: flatten each batch into one row."})
    labelled_logits_only: bool = field(default=False, metadata={"help": "Causal LMs: lm_head only on labelled positions."})


class DivergenceGuard(TrainerCallback):
    """Stops training at the first non-finite logged loss and remembers it (the run's status: diverged)."""

    def __init__(self) -> None:
        self.diverged_at: int | None = None

    def on_log(self, args, state, control, logs=None, **kwargs):
        loss = (logs or {}).get("loss")
        if loss is not None and not math.isfinite(loss):
            self.diverged_at = state.global_step
            control.should_training_stop = True


class StopAtRung(TrainerCallback):
    """Successive halving's rung (harness/halving.py): at step `step` training stops and Trainer saves a
    checkpoint, after the step's validation score (harness/training_budget.py ValidationCurve, in `on_log`), so the
    run resumes from there with the full budget's schedule. `stopped` says whether it did."""

    def __init__(self, step: int) -> None:
        self.step, self.stopped = int(step), False

    def on_step_end(self, args, state, control, **kwargs):
        if state.global_step >= self.step and state.global_step < state.max_steps:
            control.should_save = control.should_training_stop = True
            self.stopped = True


class LogToFile(TrainerCallback):
    """Trainer's logged values (loss, learning rate, gradient norm, ...) as lines of the run folder's `run.log`
    (logger `harness.log_file`, file only: the console already shows Trainer's own printout)."""

    def __init__(self) -> None:
        self.log = logging.getLogger("harness.log_file")

    def on_log(self, args, state, control, logs=None, **kwargs):
        shown = {k: (round(v, 6) if isinstance(v, float) else v) for k, v in (logs or {}).items()}
        self.log.info("step %d/%d: %s", state.global_step, state.max_steps, shown)


def quiet_library_bars_without_terminal() -> None:
    """Without a terminal (a log file, a SLURM job, a sweep) the libraries' own bars (datasets' split generation
    and tokenising, transformers' shard writing) each leave a line of carriage returns in the log; training's
    progress is ProgressLine's instead."""
    if not sys.stderr.isatty():
        datasets.disable_progress_bars()
        transformers_logging.disable_progress_bar()


class ProgressLine(TrainerCallback):
    """Without a terminal (logs, SLURM, a sweep's workers) Trainer's bar is off; this prints tqdm's own progress
    line (steps done, elapsed, ETA, rate) once per `logging_steps` instead, so a log shows how long is left."""

    def on_train_begin(self, args, state, control, **kwargs):
        self.started = time.monotonic()
        self.first_step = state.global_step  # a resumed run starts past 0

    def on_log(self, args, state, control, logs=None, **kwargs):
        if state.is_world_process_zero and state.max_steps and "train_loss" not in (logs or {}):  # not the closing log
            print("train " + tqdm.format_meter(state.global_step - self.first_step, state.max_steps - self.first_step,
                                               time.monotonic() - self.started, unit="step"), flush=True)


def training_arguments(train: Any, lr: float, precision: str, seed: int, output_dir: Path,
                       max_steps: int | None = None, dist: dict[str, Any] | None = None) -> HarnessTrainingArguments:
    """`max_steps`: the run's step count when its budget is in epochs (harness.training_budget.planned_steps);
    `dist`: Trainer's FSDP / DeepSpeed / DDP arguments (harness.distributed.training_kwargs)."""
    return HarnessTrainingArguments(
        **(dist or {}),
        output_dir=str(output_dir),
        padding_free=bool(train.get("padding_free", False)),
        labelled_logits_only=bool(train.get("labelled_logits_only", False)),
        # batches of similar length waste less on padding when padding_free is off (changes the batch order)
        train_sampling_strategy="group_by_length" if train.get("group_by_length", False) else "random",
        max_steps=max_steps or train.max_steps,
        per_device_train_batch_size=train.batch_size,
        gradient_accumulation_steps=train.grad_accum,
        learning_rate=lr,
        lr_scheduler_type=train.lr_scheduler,
        warmup_steps=train.warmup_ratio,  # transformers 5: a float below 1 is a ratio of max_steps
        weight_decay=train.weight_decay,
        max_grad_norm=train.max_grad_norm,
        optim=train.optim,
        bf16=precision == "bf16-mixed",
        fp16=precision == "fp16-mixed",
        use_cpu=not torch.cuda.is_available(),  # Trainer refuses bf16 autocast on CPU unless told
        activation_checkpointing=train.gradient_checkpointing,  # transformers 5 name of gradient checkpointing
        logging_steps=train.logging_steps,
        logging_nan_inf_filter=False,  # a NaN loss must reach DivergenceGuard, not be averaged away
        include_num_input_tokens_seen="non_padding",
        save_strategy="steps" if train.save_steps else "no",
        save_steps=train.save_steps or 500,
        save_total_limit=1,
        eval_strategy="no",  # evaluation runs after training, so tokens/s excludes it
        report_to=[],  # W&B is attached as a guarded callback (harness.tracking.SafeWandbCallback)
        seed=seed,
        data_seed=seed,
        remove_unused_columns=False,
        dataloader_num_workers=0,
        dataloader_pin_memory=torch.cuda.is_available(),
        disable_tqdm=not sys.stderr.isatty(),  # in logs: one line per logging_steps instead of a bar
    )


def build_trainer(
    model: PreTrainedModel,
    tokenizer,
    train_dataset: datasets.Dataset,
    args: TrainingArguments,
    model_kind: str,
    callbacks: list[TrainerCallback],
) -> Trainer:
    if model_kind != "causal_lm":
        collator = DataCollatorWithPadding(tokenizer)
    elif getattr(args, "padding_free", False) and packs_correctly(model):
        collator = DataCollatorWithFlattening()
        if packs_with_own_attention(model):
            callbacks = [*callbacks, PackedAttention(model)]
        # no padding exists, so every input id is a real token ("non_padding" would test ids against the pad id,
        # which for many chat models is the end-of-turn token the examples themselves contain)
        args.include_num_input_tokens_seen = "all"
    else:
        collator = DataCollatorForSeq2Seq(tokenizer, padding=True, label_pad_token_id=-100)
    if model_kind == "causal_lm" and not uses_prompt_learning(model) and accepts(model, "use_cache"):
        # (prompt-learning methods pass their virtual tokens through peft's own cache handling)
        collator = CausalBatches(collator, getattr(args, "labelled_logits_only", False) and keeps_logits(model))
    if args.disable_tqdm:
        callbacks = [*callbacks, ProgressLine()]
    return Trainer(
        model=model, args=args, train_dataset=train_dataset, data_collator=BatchShapes(collator),
        processing_class=tokenizer, callbacks=callbacks,
    )


def last_checkpoint(folder: Path, remove_incomplete: bool = True) -> str | None:
    """The newest complete `checkpoint-N` folder Trainer left (a re-run of an unfinished run resumes from it).

    Trainer writes the weights, optimizer and RNG state first and `trainer_state.json` last, so a checkpoint is
    complete once that file parses. A run killed while saving leaves a newer, incomplete folder: it is removed
    (Trainer would otherwise fail to resume from it, or later mix its files into a fresh save). Anything that
    looks while a run is alive passes remove_incomplete=False: the folder Trainer is writing is incomplete too."""
    if not folder.is_dir():
        return None
    for checkpoint in reversed(sort_checkpoints(str(folder))):  # newest first
        if _is_complete(Path(checkpoint)):
            return checkpoint
        if remove_incomplete:
            shutil.rmtree(checkpoint, ignore_errors=True)
    return None


def _is_complete(checkpoint: Path) -> bool:
    try:
        json.loads((checkpoint / TRAINER_STATE_NAME).read_text())
    except (OSError, json.JSONDecodeError):
        return False
    return True


def throughput(train_output: Any, state: Any, eval_s: float = 0.0) -> dict[str, float]:
    """Non-padding tokens/s and samples/s over the training loop alone: `eval_s`, the time periodic validation
    took inside the loop, is subtracted from Trainer's runtime."""
    loop = float(train_output.metrics["train_runtime"])
    runtime = max(loop - eval_s, 1e-9)
    samples = float(train_output.metrics["train_samples_per_second"]) * loop
    return {
        "train_runtime_s": runtime,
        "train_loop_s": loop,
        "train_tokens": int(state.num_input_tokens_seen),
        "train_tokens_per_s": state.num_input_tokens_seen / runtime if runtime > 0 else None,
        "train_samples_per_s": samples / runtime,
        "train_loss": float(train_output.metrics.get("train_loss", float("nan"))),
    }
