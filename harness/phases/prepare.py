"""The phases before training: load (data, model, method plan, the run's first record), the untuned model's
scores, and the method applied."""

from __future__ import annotations

import logging
import os
import shutil
import socket
import time
from pathlib import Path
from typing import Any

import psutil
import torch

from harness import distributed, measure
from harness.config import resumable
from harness.base_scores import base_key, cached_base_scores
from harness.forgetting import probe_loss, probe_sample, sentence_embeddings
from harness.lineage import start_from
from harness.methods import apply_method, count_parameters, freeze_head, plan_method
from harness.models import load_model, load_tokenizer, model_fingerprint
from harness.phases.context import RunContext
from harness.provenance import provenance_record
from harness.quantization import quantization_config, quantization_record
from harness.results import code_fingerprint, now, versions
from harness.runfolder import read_record
from harness.tasks import get_task
from harness.training import last_checkpoint
from harness.training_budget import budget_record, planned_steps

log = logging.getLogger("harness")
_FIRST_RUN_OF_PROCESS = [True]  # a sweep's later runs start with the libraries already imported


def load(ctx: RunContext) -> dict[str, Any]:
    """Data, model and method plan: everything that can reject the config happens before any record."""
    # seconds from the process's start to here (interpreter, imports, config): what a run pays before its own
    # work, recorded for the first run of a process only
    startup_s = round(time.time() - psutil.Process().create_time(), 3) if _FIRST_RUN_OF_PROCESS[0] else None
    _FIRST_RUN_OF_PROCESS[0] = False
    spec, cache = ctx.spec, ctx.cache
    torch.manual_seed(spec.seed)
    distributed.check_device(spec.effective)
    if ctx.main:  # a failure another rank left in an earlier attempt
        for stale in ctx.run_dir.glob("rank*-failure.json"):
            stale.unlink()
    with ctx.timed("data_prep"):
        ctx.task = get_task(spec.task, cache)
        ctx.data = ctx.task.splits()
    ctx.steps = planned_steps(spec.train, len(ctx.data["train"]))
    with ctx.timed("model_load"):
        ctx.tokenizer = load_tokenizer(spec.model, cache)
        ctx.model = load_model(spec.model, cache, precision=spec.precision, tokenizer=ctx.tokenizer,
                               labels=ctx.task.labels, quantization_config=quantization_config(spec.effective))
        if spec.cfg.get("init_from"):  # a continual stage: the base with every earlier stage's change applied
            ctx.model, ctx.init = start_from(ctx.model, spec.cfg.init_from)
    ctx.plan = plan_method(ctx.model, with_steps(spec.effective, ctx.steps), ctx.kind)
    # several processes (torchrun / accelerate launch): rank 0 alone scores and records. The group starts after
    # loading, because under a started group transformers' save_pretrained writes on rank 0 only, and a tiny
    # quantised model is loaded through a temporary folder each rank writes for itself
    distributed.start()
    with ctx.timed("forgetting_probe"):  # general English (loss for causal LMs, similarity for encoders)
        ctx.probe = probe_sample()
    checkpoints = ctx.run_dir / "checkpoints"
    if not resumable(spec.cfg.method) and checkpoints.is_dir():  # e.g. AdaLoRA: a checkpoint would not resume it
        log.warning("run %s: method=%s cannot resume from a checkpoint (resumable: false); it restarts from step 0",
                    spec.run_id, spec.cfg.method.name)
        shutil.rmtree(checkpoints, ignore_errors=True)
    # a resumed run's validation curve so far (this process scores only the steps after its checkpoint)
    ctx.earlier_curve = (read_record(ctx.run_dir) or {}).get("val_curve") or [] \
        if last_checkpoint(ctx.run_dir / "checkpoints", remove_incomplete=False) else []
    with ctx.timed("fingerprints"):
        fingerprints = {"data_fingerprint": ctx.task.fingerprint(),
                        "model_fingerprint": model_fingerprint(spec.model, cache, ctx.model)}
    log.info("run %s: %s loaded in %.1f s (%s); %d training rows, %d steps", spec.run_id, spec.model.name,
             ctx.timings["model_load"], spec.precision, len(ctx.data["train"]), ctx.steps)
    return spec.identity | {
        "lr": spec.train.lr, "precision": spec.precision, "max_steps": ctx.steps,
        "epochs": spec.train.get("epochs"), **budget_record(ctx.steps, len(ctx.data["train"]), spec.train),
        "lr_protocol": spec.cfg.get("lr_protocol"), "init_from": ctx.init, **fingerprints,
        **ctx.task.label_record(ctx.data),
        "device": "cuda" if torch.cuda.is_available() else "cpu", "torch_threads": torch.get_num_threads(),
        "started_at": now(), "pid": os.getpid(), "host": socket.gethostname(), "config": spec.effective,
        "versions": versions(), **provenance_record(ctx.run_dir), "code_fingerprint": code_fingerprint(),
        "model_load_s": round(ctx.timings["model_load"], 3), "startup_s": startup_s,
        "mem_after_load": measure.current_memory(),
        "weight_footprint_bytes": ctx.model.get_memory_footprint(), "quantization": quantization_record(ctx.model),
    }


def with_steps(eff: dict[str, Any], steps: int) -> dict[str, Any]:
    """The effective config with the run's resolved step count (what AdaLoRA's rank schedule is sized by)."""
    return eff | {"train": eff["train"] | {"max_steps": steps}}


def untuned_scores(ctx: RunContext) -> dict[str, Any]:
    """The untuned model's scores (test, validation, forgetting probe), computed once per cell and reused; rank 0
    alone scores, the other ranks wait for it."""
    part: dict[str, Any] = {}
    if ctx.main:
        t0 = time.perf_counter()
        ran_as = {**ctx.spec.effective, "train": {**ctx.spec.effective["train"], "precision": ctx.spec.precision}}
        key = base_key(ran_as, ctx.record["model_fingerprint"], ctx.record["data_fingerprint"],
                       ctx.record["versions"])
        folder = Path(ctx.spec.cfg.paths.get("base_scores") or ctx.cache / "base-scores")
        base, cached = cached_base_scores(folder, key, lambda: _base_scores(ctx), required=("base_items",))
        ctx.base_items = base.pop("base_items")  # to items.jsonl.gz at the end, not into result.json
        metric = ctx.task.primary_metric
        part = base | {"base_score": base["base_metrics"][metric], "base_val_score": base["base_val_metrics"][metric],
                       "base_cached": cached, "base_eval_s": round(time.perf_counter() - t0, 3)}
        log.info("untuned model: %s %.4f on test, %.4f on validation (%s, %.1f s)", metric, part["base_score"],
                 part["base_val_score"], "cached" if cached else "computed", part["base_eval_s"])
    distributed.wait_for_everyone()  # the other ranks start training with rank 0
    # the encoder probe compares embeddings, not one number, so it is taken here (a second's work), not cached
    if ctx.kind == "encoder" and ctx.main:
        with ctx.timed("forgetting_probe"):
            ctx.probe_before = sentence_embeddings(ctx.model, ctx.tokenizer, ctx.probe, ctx.spec.train.eval_batch_size)
    return part


def _base_scores(ctx: RunContext) -> dict[str, Any]:
    (test_metrics, test_items, _), (val_metrics, val_items, _) = \
        ctx.score_items(ctx.data["test"]), ctx.score_items(ctx.data["validation"])
    out = {"base_metrics": test_metrics, "base_val_metrics": val_metrics,
           "base_items": {"test": test_items, "validation": val_items}}
    if ctx.kind == "causal_lm":
        with ctx.timed("forgetting_probe"):
            out["forgetting_before"] = probe_loss(ctx.model, ctx.tokenizer, ctx.probe, ctx.spec.train.eval_batch_size)
    return out


def method(ctx: RunContext) -> dict[str, Any]:
    """The method applied to the model (a frozen head where the task asks for one); its parameter counts."""
    with ctx.timed("apply_method"):
        ctx.model = apply_method(ctx.model, ctx.plan)
    if ctx.kind == "encoder" and ctx.spec.task.get("freeze_head"):  # the body alone must fit the labels (memorize)
        log.info("frozen head: %s", ", ".join(freeze_head(ctx.model)) or "none found")
    total, trainable = count_parameters(ctx.model)
    return {"params_total": total, "params_trainable": trainable, "trainable_pct": 100.0 * trainable / total,
            "target_modules": ctx.plan.target_modules, "mem_after_method": measure.current_memory()}
