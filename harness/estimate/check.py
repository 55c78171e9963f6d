"""Predicted vs measured peak memory for runs the harness has done (their result.json and config).

What "measured" is depends on the record's `mem_kind` (harness/measure.py):
- `cuda_allocated`: torch.cuda.max_memory_allocated during training: tensors only, no CUDA context, no allocator
  cache. Predicted with device="cuda" and no overhead term.
- `cpu_rss` / `cpu_rss_sampled`: the process's peak resident set size during training. Besides the tensors it
  includes the Python interpreter, the torch / transformers / peft / datasets code and their shared libraries,
  the tokenizer and the task data, which the estimator models as one runtime overhead (model.CPU_RUNTIME_BYTES,
  measured here); heap freed before training is handed back first (harness/measure.py). Runs that record
  `train_begin_mem` are split into the resident size at the start of training (predicted: weights + runtime) and
  the growth during training (predicted: the training tensors).

  What the growth holds beyond live tensors, and the estimator does not model: heap glibc malloc keeps resident
  after tensors are freed. Once a freed block came from mmap, glibc raises its mmap threshold (up to 32 MiB), so
  later blocks of that size come from the heap; batches change shape every step, so freed blocks rarely fit the
  next step's tensors and the heap grows. Measured here (smollm2-135m, classify, LoRA r=16): torch's profiler puts the live-tensor
  peak within 1% of the prediction, yet RSS grew by 0.2 GiB more after 3 steps and 1.1 GiB more after 80; with
  glibc told to mmap every block over 128 KiB (MALLOC_MMAP_THRESHOLD_=131072, freed at once) the excess after 80
  steps fell to 0.3 GiB, at a sixth of the training speed. On CUDA the allocated figure has no such term (its
  counterpart is the caching allocator's reserved memory, reported next to it).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from omegaconf import OmegaConf

from harness.errors import ConfigError
from harness.runfolder import find_runs, open_run


def read_run(run_dir: Path) -> tuple[dict[str, Any], dict[str, Any]]:
    """(result.json, effective config) of a run folder."""
    run = open_run(run_dir)
    return run.result, run.eff


def batch_seq_len(result: dict[str, Any], eff: dict[str, Any], cache: Path | None = None) -> tuple[int, str]:
    """The padded length of the longest training batch: the longest tokenised training example (a run that
    draws most of its split meets it; batches are padded to their longest member), capped at max_seq_len. Falls
    back to the record's mean non-padding tokens per example when the task data cannot be rebuilt here."""
    from harness.assets import cache_dir
    from harness.models import load_tokenizer
    from harness.tasks import get_task

    train = eff["train"]
    try:
        task = get_task(OmegaConf.create(eff["task"]), cache or cache_dir())
        tokenizer = load_tokenizer(OmegaConf.create(eff["model"]), cache or cache_dir())
        ds = task.train_dataset(task.splits()["train"], tokenizer, eff["model"]["kind"], train["max_seq_len"])
        return min(max(len(ids) for ids in ds["input_ids"]), train["max_seq_len"]), "longest training example"
    except Exception as err:  # noqa: BLE001 - any failure to rebuild the data falls back to the record
        samples = (result.get("train_steps") or train["max_steps"]) * train["batch_size"] * train.get("grad_accum", 1)
        tokens = result.get("train_tokens")
        if not tokens:
            raise ConfigError(f"cannot tell the sequence length of {result.get('run_id')}: {err}") from None
        return max(1, round(tokens / samples)), "mean tokens per example (record)"


def check_run(run_dir: Path, seq_len: int | None = None, cache: Path | None = None, **kwargs: Any) -> dict[str, Any]:
    """Predicted vs measured peak memory of one finished run, with the relative error."""
    from harness.estimate.model import estimate

    result, eff = read_run(run_dir)
    ran = result.get("precision")
    if ran and ran != eff["train"].get("precision"):  # `auto` ran in fp32 where bf16 is not native (RunSpec.precision)
        eff = {**eff, "train": {**eff["train"], "precision": ran}}
    measured, kind = result.get("peak_mem_bytes"), result.get("mem_kind")
    if not measured or not kind:
        raise ConfigError(f"{run_dir} has no measured peak memory (status {result.get('status')})")
    device = "cuda" if kind.startswith("cuda") else "cpu"
    source, shape = "given", None
    if seq_len is None and result.get("largest_batch"):
        shape = result["largest_batch"]
        seq_len, source = shape["longest_row"], "largest training batch (record)"
    elif seq_len is None:
        seq_len, source = batch_seq_len(result, eff, cache)
    est = estimate(eff, device=device, seq_len=seq_len, cache=cache, batch_shape=shape,
                   tokens_per_s=result.get("train_tokens_per_s") or None, **kwargs)
    predicted = est.memory.peak - (est.memory.overhead if device == "cuda" else 0)  # allocated excludes the context
    row = {
        "run_id": result.get("run_id", Path(run_dir).name), "model": est.model, "method": est.method,
        "precision": est.precision, "mem_kind": kind, "seq_len": seq_len, "seq_len_source": source,
        "batch_size": est.batch_size, "measured_bytes": int(measured), "predicted_bytes": int(predicted),
        "error_pct": 100.0 * (predicted - measured) / measured,
        "params_trainable": est.params_trainable, "params_trainable_measured": result.get("params_trainable"),
        "breakdown": est.memory.as_dict(),
    }
    if shape:
        row["batch_shape"] = shape
    start = (result.get("train_begin_mem") or {}).get("rss")
    if device == "cpu" and start:  # where training started from, and what training added on top
        start_predicted = est.memory.weights + est.memory.overhead
        row |= {"start_measured_bytes": int(start), "start_predicted_bytes": int(start_predicted),
                "growth_measured_bytes": int(measured - start), "growth_predicted_bytes": int(predicted - start_predicted)}
    if result.get("weight_footprint_bytes"):  # transformers' get_memory_footprint() after loading
        row["weights_measured_bytes"] = result["weight_footprint_bytes"]
    if result.get("adapter_bytes"):
        row |= {"disk_measured_bytes": result["adapter_bytes"], "disk_predicted_bytes": est.disk_bytes}
    return row


def check_runs(roots: list[Path], **kwargs: Any) -> list[dict[str, Any]]:
    """check_run for every finished run under `roots`; runs that cannot be predicted get a `skipped` reason."""
    rows = []
    for run_dir in find_runs(roots):
        try:
            rows.append(check_run(run_dir, **kwargs))
        except (ConfigError, OSError, KeyError, json.JSONDecodeError) as err:
            rows.append({"run_id": run_dir.name, "skipped": str(err)})
    return rows
