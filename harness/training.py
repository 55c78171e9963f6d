"""Training through transformers' `Trainer`: arguments from the run config, collators, divergence guard."""

from __future__ import annotations

import math
import sys
from pathlib import Path
from typing import Any

import datasets
import torch
from transformers import (
    DataCollatorForSeq2Seq,
    DataCollatorWithPadding,
    PreTrainedModel,
    Trainer,
    TrainerCallback,
    TrainingArguments,
)
from transformers.trainer_utils import get_last_checkpoint


class DivergenceGuard(TrainerCallback):
    """Stops training at the first non-finite logged loss and remembers it (the run's status: diverged)."""

    def __init__(self) -> None:
        self.diverged_at: int | None = None

    def on_log(self, args, state, control, logs=None, **kwargs):
        loss = (logs or {}).get("loss")
        if loss is not None and not math.isfinite(loss):
            self.diverged_at = state.global_step
            control.should_training_stop = True


def training_arguments(train: Any, lr: float, seed: int, output_dir: Path) -> TrainingArguments:
    return TrainingArguments(
        output_dir=str(output_dir),
        max_steps=train.max_steps,
        per_device_train_batch_size=train.batch_size,
        gradient_accumulation_steps=train.grad_accum,
        learning_rate=lr,
        lr_scheduler_type=train.lr_scheduler,
        warmup_steps=train.warmup_ratio,  # transformers 5: a float below 1 is a ratio of max_steps
        weight_decay=train.weight_decay,
        max_grad_norm=train.max_grad_norm,
        optim=train.optim,
        bf16=train.precision == "bf16-mixed",
        fp16=train.precision == "fp16-mixed",
        gradient_checkpointing=train.gradient_checkpointing,
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
    if model_kind == "causal_lm":
        collator = DataCollatorForSeq2Seq(tokenizer, padding=True, label_pad_token_id=-100)
    else:
        collator = DataCollatorWithPadding(tokenizer)
    return Trainer(
        model=model, args=args, train_dataset=train_dataset, data_collator=collator,
        processing_class=tokenizer, callbacks=callbacks,
    )


def last_checkpoint(folder: Path) -> str | None:
    """The newest `checkpoint-N` folder Trainer left (a re-run of an unfinished run resumes from it)."""
    if not folder.is_dir():
        return None
    return get_last_checkpoint(str(folder))


def throughput(train_output: Any, state: Any) -> dict[str, float]:
    """Non-padding tokens/s and samples/s over the training loop alone (no evaluation ran inside it)."""
    runtime = float(train_output.metrics["train_runtime"])
    return {
        "train_runtime_s": runtime,
        "train_tokens": int(state.num_input_tokens_seen),
        "train_tokens_per_s": state.num_input_tokens_seen / runtime if runtime > 0 else None,
        "train_samples_per_s": float(train_output.metrics["train_samples_per_second"]),
        "train_loss": float(train_output.metrics.get("train_loss", float("nan"))),
    }
