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
  attention on it (`packed_attention`); everything else (projections, MLP, norms) still sees no padding.
- no KV cache in training (`use_cache=False` in every batch): transformers 5 would otherwise build one each
  step, and a cache present disables the packed-sequence detection padding-free batching relies on.
All are skipped where they would be wrong: prompt-learning methods (virtual tokens change the sequence and use
peft's cache) and models whose forward lacks the arguments. Encoders keep dynamic padding.
"""

from __future__ import annotations

import contextlib
import inspect
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
import peft
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
from transformers import AttentionInterface
from transformers.integrations.sdpa_attention import sdpa_attention_forward
from transformers.masking_utils import AttentionMaskInterface, sdpa_mask
from transformers.models.llama.modeling_llama import eager_attention_forward
from transformers.trainer import TRAINER_STATE_NAME
from transformers.utils import logging as transformers_logging
from transformers.trainer_utils import sort_checkpoints


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
    elif getattr(args, "padding_free", False) and _packs_correctly(model):
        collator = DataCollatorWithFlattening()
        if packs_with_own_attention(model):
            callbacks = [*callbacks, PackedAttention(model)]
        # no padding exists, so every input id is a real token ("non_padding" would test ids against the pad id,
        # which for many chat models is the end-of-turn token the examples themselves contain)
        args.include_num_input_tokens_seen = "all"
    else:
        collator = DataCollatorForSeq2Seq(tokenizer, padding=True, label_pad_token_id=-100)
    if model_kind == "causal_lm" and not _prompt_learning(model) and _accepts(model, "use_cache"):
        # (prompt-learning methods pass their virtual tokens through peft's own cache handling)
        collator = CausalBatches(collator, getattr(args, "labelled_logits_only", False) and _keeps_logits(model))
    if args.disable_tqdm:
        callbacks = [*callbacks, ProgressLine()]
    return Trainer(
        model=model, args=args, train_dataset=train_dataset, data_collator=BatchShapes(collator),
        processing_class=tokenizer, callbacks=callbacks,
    )


class CausalBatches:
    """Wraps a causal-LM collator for training.

    - `use_cache=False`: transformers 5 fills `use_cache` from the config (True) even in training, builds a KV
      cache nobody reads, and, with a cache present, skips the packed-sequence detection, so a flattened batch
      would attend across examples (seen: 16% gradient error on a tiny Llama). Off, both are fixed.
    - `labelled_only`: `logits_to_keep` marks the positions whose next token has a label and `shift_labels` holds
      those labels, so the model projects and scores only there (ForCausalLMLoss uses `shift_labels` as given;
      Trainer counts `num_items_in_batch` from it).
    """

    def __init__(self, collator, labelled_only: bool) -> None:
        self.collator = collator
        self.labelled_only = labelled_only

    def __call__(self, features: list[dict[str, Any]]) -> dict[str, Any]:
        batch = self.collator(features)
        batch["use_cache"] = False
        if self.labelled_only:
            shifted = torch.nn.functional.pad(batch["labels"], (0, 1), value=-100)[..., 1:]
            keep = shifted != -100
            batch["logits_to_keep"] = keep
            batch["shift_labels"] = shifted[keep]
        return batch


class BatchShapes:
    """Passes batches through and remembers each one's examples, non-padding tokens and shape. `trained(n)` sums
    the first n batches, the ones the optimizer steps consumed: accelerate's dataloader collates one batch ahead
    (to know where the data ends), so counting at collation would add a batch the run never trained on. The
    largest trained micro-batch's shape sets the activation memory: `tokens` (positions the layers compute,
    padding included), `rows`, `longest_row` (a flattened batch's longest example, from its position ids),
    `logit_positions` (positions the output head projects), and whether the batch was `flattened`."""

    def __init__(self, collator) -> None:
        self.collator = collator
        self.batches: list[dict[str, Any]] = []  # collated in this process (since the start, or a resume)

    def __call__(self, features: list[dict[str, Any]]) -> dict[str, Any]:
        batch = self.collator(features)
        ids = batch["input_ids"]
        flat = ids.shape[0] == 1 and "position_ids" in batch and len(features) > 1
        rows, longest = (len(features), int(batch["position_ids"].max()) + 1) if flat else tuple(ids.shape)
        keep = batch.get("logits_to_keep")
        logits = int(keep.sum()) if torch.is_tensor(keep) and keep.dtype == torch.bool else ids.numel()
        mask = batch.get("attention_mask")
        self.batches.append({"examples": len(features),
                             "non_padding": int(mask.sum()) if torch.is_tensor(mask) else ids.numel(),
                             "shape": {"tokens": ids.numel(), "rows": rows, "longest_row": longest,
                                       "logit_positions": logits, "flattened": flat}})
        return batch

    def trained(self, n: int | None = None) -> dict[str, Any]:
        """examples, non-padding tokens and the largest shape of the first n batches (all collated: None)."""
        done = self.batches[:n] if n is not None else self.batches
        return {"examples": sum(b["examples"] for b in done), "tokens": sum(b["non_padding"] for b in done),
                "largest": max((b["shape"] for b in done), key=lambda sh: sh["tokens"], default={})}

    @property
    def largest(self) -> dict[str, Any]:
        return self.trained()["largest"]


def _base_model(model: torch.nn.Module) -> torch.nn.Module:
    return model.get_base_model() if isinstance(model, peft.PeftModel) else model


def _accepts(model: torch.nn.Module, argument: str) -> bool:
    return argument in inspect.signature(_base_model(model).forward).parameters


def _prompt_learning(model: torch.nn.Module) -> bool:
    return isinstance(model, peft.PeftModel) and model.active_peft_config.is_prompt_learning


def _packs_correctly(model: torch.nn.Module) -> bool:
    """Padding-free needs restarted `position_ids` honoured as sequence boundaries: transformers' mask utilities
    do that for causal decoders with SDPA / eager / flash attention when no cache is built (CausalBatches turns it
    off); prompt-learning methods add virtual tokens, so they keep padded batches."""
    attn = getattr(_base_model(model).config, "_attn_implementation", None)
    return (_accepts(model, "position_ids") and _accepts(model, "use_cache") and not _prompt_learning(model)
            and attn in ("sdpa", "eager", "flash_attention_2", "flash_attention_3"))


def _keeps_logits(model: torch.nn.Module) -> bool:
    from transformers.loss.loss_utils import ForCausalLMLoss

    return _accepts(model, "logits_to_keep") and getattr(_base_model(model), "loss_function", None) is ForCausalLMLoss


def keeps_labelled_logits(model: torch.nn.Module) -> bool:
    """The model projects only the positions a boolean `logits_to_keep` marks and scores `shift_labels` as given
    (transformers' ForCausalLMLoss), with the cache off: what training's labelled-logits batches and the
    forgetting probe rely on. Not under prompt learning (virtual tokens shift the positions)."""
    return not _prompt_learning(model) and _accepts(model, "use_cache") and _keeps_logits(model)


# ---- attention for flattened batches ----
PACKED_ATTENTION = "harness_packed"
# Attention modules whose computation is transformers' plain (GQA) scaled dot-product one, so the Llama eager
# function computes it exactly; others keep transformers' own (dense-mask) handling of packed rows.
PLAIN_ATTENTION_TYPES = ("llama", "mistral", "qwen2", "qwen3")
# On a CPU, matmul + softmax beat SDPA's flash kernel on short rows (here, fwd+bwd per layer at 8 x 97 tokens:
# 4.6 ms against 16 ms; at 8 x 256: 45 ms against 36 ms), so short rows take the eager path.
EAGER_MAX_LEN = 192


def packed_rows_run_eager(device_type: str, longest_row: int) -> bool:
    """Whether packed_attention takes the eager path for rows this long on this device."""
    return device_type == "cpu" and longest_row <= EAGER_MAX_LEN


def packed_attention(module, query, key, value, attention_mask, position_ids=None, **kwargs):
    """Attention of a flattened batch (`[1, heads, n, d]`, examples delimited by restarting `position_ids`)
    computed per example: scattered into `[examples, heads, longest, d]`, causal attention, gathered back. Exactly
    what each example gets alone; anything else (one sequence, a cache, sliding windows, soft-capping) goes to
    transformers' SDPA function with the mask transformers built."""
    n = query.shape[2]
    pos = None if position_ids is None else position_ids.reshape(-1)
    plain = not any(kwargs.get(k) is not None for k in ("sliding_window", "softcap", "s_aux"))
    starts = None
    if plain and query.shape[0] == 1 and key.shape[2] == n > 1 and pos is not None and pos.numel() == n:
        starts = torch.nonzero(torch.diff(pos) != 1).flatten() + 1
    if starts is None or starts.numel() == 0:
        return sdpa_attention_forward(module, query, key, value, attention_mask, position_ids=position_ids, **kwargs)
    bounds = torch.cat([starts.new_zeros(1), starts, starts.new_full((1,), n)])
    lengths = torch.diff(bounds)
    rows, width = len(lengths), int(lengths.max())
    example = torch.repeat_interleave(torch.arange(rows, device=starts.device), lengths)
    slot = example * width + torch.arange(n, device=starts.device) - bounds[example]  # token -> (row, column)

    def to_rows(x: torch.Tensor) -> torch.Tensor:
        heads, dim = x.shape[1], x.shape[3]
        out = x.new_zeros(rows * width, heads, dim).index_copy(0, slot, x[0].transpose(0, 1))
        return out.view(rows, width, heads, dim).transpose(1, 2)

    kwargs.pop("is_causal", None)
    q, k, v = to_rows(query), to_rows(key), to_rows(value)
    if packed_rows_run_eager(query.device.type, width):
        # right padding: a real token's causal window never reaches a pad; pad rows are computed and dropped
        causal = torch.full((width, width), torch.finfo(q.dtype).min, dtype=q.dtype, device=q.device).triu(1)
        out, _ = eager_attention_forward(module, q, k, v, causal[None, None], **kwargs)
    else:
        out, _ = sdpa_attention_forward(module, q, k, v, None, is_causal=True, **kwargs)
    return out.reshape(rows * width, *out.shape[2:]).index_select(0, slot).unsqueeze(0), None


AttentionInterface.register(PACKED_ATTENTION, packed_attention)
AttentionMaskInterface.register(PACKED_ATTENTION, sdpa_mask)  # for the fallback; packed rows ignore the mask


class PackedAttention(TrainerCallback):
    """Switches the model to `packed_attention` for training only (evaluation and generation keep SDPA)."""

    def __init__(self, model: torch.nn.Module) -> None:
        self.model, self.previous = _base_model(model), None

    def on_train_begin(self, args, state, control, **kwargs):
        self.previous = self.model.config._attn_implementation
        self.model.set_attn_implementation(PACKED_ATTENTION)

    def on_train_end(self, args, state, control, **kwargs):
        if self.previous is not None:
            self.model.set_attn_implementation(self.previous)


@contextlib.contextmanager
def evaluation_attention(model: torch.nn.Module):
    """Generation inside training (periodic validation) runs with the model's own attention, not packed rows."""
    base = _base_model(model)
    current = getattr(base.config, "_attn_implementation", None)
    if current != PACKED_ATTENTION:
        yield
        return
    base.set_attn_implementation("sdpa")
    try:
        yield
    finally:
        base.set_attn_implementation(current)


def packs_with_own_attention(model: torch.nn.Module) -> bool:
    """Whether training switches this model's flattened batches to `packed_attention`."""
    config = _base_model(model).config
    return config._attn_implementation == "sdpa" and config.model_type in PLAIN_ATTENTION_TYPES


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
