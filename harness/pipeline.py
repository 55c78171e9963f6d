"""The body of one run, in the order it happens; `harness.run` wraps it with config checks and fault handling."""

from __future__ import annotations

import logging
import os
import shutil
import socket
import time
import warnings
from pathlib import Path
from typing import Any

import psutil
import torch
from omegaconf import DictConfig, OmegaConf

from harness import distributed, items, measure
from harness.assets import cache_dir
from harness.forgetting import probe_loss, probe_sample, sentence_embeddings, similarity_forgetting
from harness.methods import (adalora_record, apply_method, count_parameters, discard_plan_files, freeze_head,
                             method_callbacks, plan_method, quantization_config, quantization_record, save_trained)
from harness.models import load_model, load_tokenizer, local_folder, model_fingerprint
from harness.provenance import provenance_record
from harness.runfolder import read_record
from harness.results import RESULT_FILE, Status, code_fingerprint, now, versions, write_json_atomic
from harness.tasks import get_task
from harness.tracking import Tracker
from harness.training import (DivergenceGuard, LogToFile, StopAtRung, build_trainer, evaluation_attention, last_checkpoint,
                              throughput, training_arguments)
from harness.lineage import score_earlier_tasks, start_from
from harness.units import format_bytes
from harness.update_check import UpdateCheck, stuck_reason
from harness.validation import ValidationCurve, budget_record, collapse_reason, planned_steps
from harness.base_scores import base_key, cached_base_scores
from harness.config import identity

log = logging.getLogger("harness")
# Deprecation chatter from transformers internals.
warnings.filterwarnings("ignore", category=FutureWarning, module="transformers")
warnings.filterwarnings("ignore", message=".*pin_memory.*no accelerator.*")
N_SAMPLES = 5  # input / reference / output triples kept in the record
_FIRST_RUN_OF_PROCESS = [True]  # a sweep's later runs start with the libraries already imported


def execute(cfg: DictConfig, eff: dict[str, Any], rid: str, run_dir: Path) -> dict[str, Any]:
    # seconds from the process's start to here (interpreter, imports, config): what a run pays before its own
    # work, recorded for the first run of a process only
    startup_s = round(time.time() - psutil.Process().create_time(), 3) if _FIRST_RUN_OF_PROCESS[0] else None
    _FIRST_RUN_OF_PROCESS[0] = False
    cache = cache_dir(cfg.paths.cache)
    torch.manual_seed(cfg.seed)
    kind = cfg.model.kind
    distributed.check_device(eff)
    main = distributed.world().main
    if main:  # a failure another rank left in an earlier attempt
        for stale in run_dir.glob("rank*-failure.json"):
            stale.unlink()
    # FSDP / ZeRO-3 leave each rank a shard of the tuned weights: every rank then runs the scoring's forward
    # passes together (the same rows, so the same gathers) and saves through Trainer, which gathers a full
    # state dict; rank 0 still writes alone. With DDP rank 0 holds the whole model and scores it by itself.
    sharded = (eff.get("dist") or {}).get("strategy") in distributed.SHARDED

    def record(result: dict[str, Any]) -> None:
        if main:
            write_json_atomic(run_dir / RESULT_FILE, result)

    # 1. data, model and method plan: everything that can reject the config happens before any record.
    task = get_task(cfg.task, cache)
    data = task.splits()
    steps = planned_steps(cfg.train, len(data["train"]))
    tokenizer = load_tokenizer(cfg.model, cache)
    t0 = time.perf_counter()
    model = load_model(cfg.model, cache, precision=eff["train"]["precision"], tokenizer=tokenizer, labels=task.labels,
                       quantization_config=quantization_config(eff))
    init = None
    if cfg.get("init_from"):  # a continual stage: the base with every earlier stage's change applied
        model, init = start_from(model, cfg.init_from)
    load_s = time.perf_counter() - t0
    plan = plan_method(model, with_steps(eff, steps), kind)
    # several processes (torchrun / accelerate launch): rank 0 alone scores and records. The group starts after
    # loading, because under a started group transformers' save_pretrained writes on rank 0 only, and a tiny
    # quantised model is loaded through a temporary folder each rank writes for itself
    distributed.start()
    probe = probe_sample()  # general English for the forgetting probe (loss for causal LMs, similarity for encoders)

    # a resumed run's validation curve so far (this process scores only the steps after its checkpoint)
    earlier_curve = (read_record(run_dir) or {}).get("val_curve") or [] \
        if last_checkpoint(run_dir / "checkpoints", remove_incomplete=False) else []
    result: dict[str, Any] = identity(cfg) | {
        "status": Status.RUNNING.value, "reason": None,
        "lr": eff["train"]["lr"], "precision": eff["train"]["precision"], "max_steps": steps,
        "epochs": cfg.train.get("epochs"), **budget_record(steps, len(data["train"]), cfg.train),
        "lr_protocol": cfg.get("lr_protocol"), "init_from": init,
        "data_fingerprint": task.fingerprint(),
        **task.label_record(data),
        "model_fingerprint": model_fingerprint(cfg.model, cache, model),
        "device": "cuda" if torch.cuda.is_available() else "cpu", "torch_threads": torch.get_num_threads(),
        "started_at": now(),
        "pid": os.getpid(), "host": socket.gethostname(), "config": eff,
        "versions": versions(), **provenance_record(run_dir), "code_fingerprint": code_fingerprint(), "model_load_s": round(load_s, 3),
        "startup_s": startup_s,
        "mem_after_load": measure.current_memory(),
        "weight_footprint_bytes": model.get_memory_footprint(), "quantization": quantization_record(model),
    }
    record(result)
    log.info("run %s: %s loaded in %.1f s (%s); %d training rows, %d steps", rid, cfg.model.name, load_s,
             eff["train"]["precision"], len(data["train"]), steps)

    # 2. the untuned model's scores (test, validation, forgetting probe), computed once per cell and reused
    test_split, val_split = data["test"], data["validation"]

    def score(split) -> tuple[dict[str, float], list[str]]:
        outputs = task.predict(model, tokenizer, split, kind, cfg.train.eval_batch_size, cfg.train.max_seq_len)
        return task.score(outputs, list(split)), outputs

    def score_items(split) -> tuple[dict[str, float], list[str], list[dict[str, Any]]]:
        """`score` with the per-item records (harness/items.py) from the same pass."""
        outputs = task.predict(model, tokenizer, split, kind, cfg.train.eval_batch_size, cfg.train.max_seq_len)
        return *task.scored_items(outputs, list(split)), outputs

    def base_scores() -> dict[str, Any]:
        (test_metrics, test_items, _), (val_metrics, val_items, _) = score_items(test_split), score_items(val_split)
        out = {"base_metrics": test_metrics, "base_val_metrics": val_metrics,
               "base_items": {"test": test_items, "validation": val_items}}
        if kind == "causal_lm":
            out["forgetting_before"] = probe_loss(model, tokenizer, probe, cfg.train.eval_batch_size)
        return out

    if main:
        t0 = time.perf_counter()
        key = base_key(eff, result["model_fingerprint"], result["data_fingerprint"], result["versions"])
        base, cached = cached_base_scores(Path(cfg.paths.get("base_scores") or cache / "base-scores"), key, base_scores,
                                          required=("base_items",))
        base_items = base.pop("base_items")  # to items.jsonl.gz at the end, not into result.json
        result |= base | {"base_score": base["base_metrics"][task.primary_metric],
                          "base_val_score": base["base_val_metrics"][task.primary_metric],
                          "base_cached": cached, "base_eval_s": round(time.perf_counter() - t0, 3)}
        log.info("untuned model: %s %.4f on test, %.4f on validation (%s, %.1f s)", task.primary_metric,
                 result["base_score"], result["base_val_score"], "cached" if cached else "computed",
                 result["base_eval_s"])
    distributed.wait_for_everyone()  # the other ranks start training with rank 0

    # the encoder probe compares embeddings, not one number, so it is taken here (a second's work) rather than cached
    probe_before = sentence_embeddings(model, tokenizer, probe, cfg.train.eval_batch_size) \
        if kind == "encoder" and main else None

    # 3. the method, then training (with the validation curve when train.eval_every is set)
    model = apply_method(model, plan)
    if kind == "encoder" and cfg.task.get("freeze_head"):  # the body alone must fit the labels (task memorize)
        log.info("frozen head: %s", ", ".join(freeze_head(model)) or "none found")
    total, trainable = count_parameters(model)
    result |= {"params_total": total, "params_trainable": trainable, "trainable_pct": 100.0 * trainable / total,
               "target_modules": plan.target_modules, "mem_after_method": measure.current_memory()}
    record(result)  # a crash from here on keeps the base score and counts
    tags = [f"method:{cfg.method.name}", f"task:{cfg.task.name}", f"model:{cfg.model.name}",
            f"r:{eff['r']}", f"targets:{result['targets']}"]
    tracking = cfg.tracking if main else OmegaConf.create({"backend": "none"})  # one W&B run: rank 0's
    tracker = Tracker(tracking, run_dir, rid, eff, tags, cfg.group, cfg.name)
    train_ds = task.train_dataset(data["train"], tokenizer, kind, cfg.train.max_seq_len)
    peak, guard, update = measure.PeakMemory(), DivergenceGuard(), UpdateCheck(model, cfg.method.name)
    callbacks = [peak, guard, update, LogToFile(), *method_callbacks(model, plan), *tracker.callbacks]
    curve = None
    if cfg.train.eval_every and (main or sharded):  # DDP: the other ranks wait for it at their next exchange
        subset = val_split.select(range(min(cfg.train.eval_subset, len(val_split))))

        def score_subset() -> float:
            with evaluation_attention(model):
                return score(subset)[0][task.primary_metric]

        curve = ValidationCurve(cfg.train.eval_every, score_subset, tracker.log)
        callbacks.append(curve)
    rung = StopAtRung(cfg.rung_step) if cfg.get("rung_step") else None
    if rung:
        callbacks.append(rung)
    args = training_arguments(cfg.train, eff["train"]["lr"], eff["train"]["precision"], cfg.seed,
                              run_dir / "checkpoints", max_steps=steps,
                              dist=distributed.training_kwargs(cfg.dist))
    trainer = build_trainer(model, tokenizer, train_ds, args, kind, callbacks)
    resume_from = last_checkpoint(run_dir / "checkpoints")
    if resume_from:
        log.info("resuming from %s", resume_from)
    result["resumed_from"] = resume_from and Path(resume_from).name
    train_output = trainer.train(resume_from_checkpoint=resume_from)
    eval_s = curve.seconds if curve else 0.0
    resumed_steps = int(Path(resume_from).name.rsplit("-", 1)[-1]) if resume_from else 0
    trained = trainer.data_collator.trained((trainer.state.global_step - resumed_steps) * cfg.train.grad_accum)
    result |= throughput(train_output, trainer.state, eval_s) | peak.result() | {
        "largest_batch": trained["largest"], "train_steps_done": trainer.state.global_step,
        "train_epochs_done": trainer.state.epoch, "train_examples": trained["examples"],
        "eval_s": round(eval_s, 3), "eval_subset": len(subset) if curve else 0,
        "val_curve": [p for p in earlier_curve if p["step"] <= resumed_steps] + (curve.points if curve else [])}
    result["loss_curve"] = [(h["step"], h["loss"]) for h in trainer.state.log_history if "loss" in h]
    result["update_check"], stuck = update.report()
    result |= adalora_record(model) or {}  # AdaLoRA: the schedule's end step and what the pruning kept
    if "dist" in eff:  # every rank's share, gathered; then rank 0 alone goes on
        ranks = distributed.gather({"peak_mem_bytes": result.get("peak_mem_bytes"), "examples": result["train_examples"],
                                    "tokens": trained["tokens"], "runtime_s": result["train_runtime_s"],
                                    "checksum": distributed.weights_checksum(model)})
        result |= distributed.dist_record(eff["dist"]["strategy"], ranks) | {
            "train_examples": sum(r["examples"] for r in ranks), "dist_wrapper": type(trainer.model_wrapped).__name__}
        if not main and not sharded:
            return result
    if rung and rung.stopped and guard.diverged_at is None:  # a halving rung: resumed later, or never
        result |= {"status": Status.PAUSED.value, "rung_step": trainer.state.global_step, "finished_at": now(),
                   "reason": f"stopped at successive-halving rung step {trainer.state.global_step} (checkpoint kept)"}
        record(result)
        tracker.finish(result)
        return result
    if guard.diverged_at is not None or stuck:  # nothing worth scoring or saving
        reason = f"non-finite loss at step {guard.diverged_at}" if guard.diverged_at is not None else \
            stuck_reason(stuck, result["update_check"])
        status = Status.DIVERGED if guard.diverged_at is not None else Status.FAILED
        result |= {"status": status.value, "reason": reason, "finished_at": now()}
        record(result)
        tracker.finish(result)
        return result

    # 4. score the tuned model (validation for every choice, test once for the record), save what was trained
    t0 = time.perf_counter()
    val_metrics, val_items, val_outputs = score_items(val_split)
    metrics, test_items, outputs = score_items(test_split)
    t_probe = time.perf_counter()
    if kind == "causal_lm":  # forgetting: loss on general text after training minus before
        after = probe_loss(model, tokenizer, probe, cfg.train.eval_batch_size)
        result |= {"forgetting_after": after, "forgetting": after - result["forgetting_before"],
                   "forgetting_probe": "lm-loss"}
    else:
        result |= similarity_forgetting(probe_before, sentence_embeddings(model, tokenizer, probe, cfg.train.eval_batch_size))
    result["final_eval_s"] = round(time.perf_counter() - t0, 3)
    result["final_probe_s"] = round(time.perf_counter() - t_probe, 3)
    if init is not None:  # forgetting of the earlier stages' tasks, and of general text since the root's base
        t0 = time.perf_counter()

        def score_task(task_cfg) -> tuple[dict[str, float], str]:
            earlier = get_task(task_cfg, cache)
            split = earlier.splits()["test"]
            outputs = earlier.predict(model, tokenizer, split, kind, cfg.train.eval_batch_size, cfg.train.max_seq_len)
            return earlier.score(outputs, list(split)), earlier.primary_metric

        result["earlier_tasks"] = score_earlier_tasks(init, score_task)
        if kind == "causal_lm" and init.get("root_forgetting_before") is not None:
            result["forgetting_total"] = result["forgetting_after"] - init["root_forgetting_before"]
        result["earlier_eval_s"] = round(time.perf_counter() - t0, 3)
        log.info("earlier tasks: %s (%.1f s)", ", ".join(f"{e['task']} {e['score_now']:.4f} (was {e['score_at_stage']:.4f})"
                                                         for e in result["earlier_tasks"]), result["earlier_eval_s"])
    log.info("tuned model: %s %.4f on test, %.4f on validation (%.1f s)", task.primary_metric,
             metrics[task.primary_metric], val_metrics[task.primary_metric], result["final_eval_s"])
    rows = list(test_split)[:N_SAMPLES]
    samples = [{"input": task.describe(r), "reference": task.target(r), "output": o} for r, o in zip(rows, outputs)]
    saved = run_dir / ("model" if plan.peft_config is None else "adapter")
    result["base_model"] = name_base_model(model, cfg.model, cache)
    if sharded:
        trainer.save_model(str(saved))  # a collective: Trainer gathers the full state dict, rank 0 writes it
        if not main:
            return result
    else:
        save_atomically(model, saved, plan)
    discard_plan_files(plan)
    shutil.rmtree(run_dir / "checkpoints", ignore_errors=True)  # only needed to resume an unfinished run
    result |= write_run_items(task, run_dir, list(data["train"]), {"validation": list(val_split), "test": list(test_split)},
                              {"validation": val_items, "test": test_items}, base_items,
                              base_val=result["base_val_score"], base_test=result["base_score"])
    one_class = task.labels and task.one_class_is_collapse
    collapsed = collapse_reason(result["loss_curve"],
                                [task.predicted_label(o) for o in val_outputs] if one_class else None,
                                [task.target(r) for r in val_split] if one_class else None)
    result |= {"score": metrics[task.primary_metric], "primary_metric": task.primary_metric, "metrics": metrics,
               "val_score": val_metrics[task.primary_metric], "val_metrics": val_metrics,
               "samples": samples, "adapter_bytes": measure.dir_bytes(saved), "saved_to": saved.name,
               "status": (Status.COLLAPSED if collapsed else Status.OK).value, "reason": collapsed,
               "finished_at": now()}
    write_json_atomic(run_dir / RESULT_FILE, result)
    tracker.log_table("samples", ["input", "reference", "output"], [[s["input"], s["reference"], s["output"]] for s in samples])
    tracker.finish(result)
    print_summary(result, run_dir)
    return result


def write_run_items(task, run_dir: Path, train_rows: list[dict[str, Any]], splits: dict[str, list[dict[str, Any]]],
                    tuned_items: dict[str, list[dict[str, Any]]], base_items: dict[str, list[dict[str, Any]]],
                    base_val: float, base_test: float) -> dict[str, Any]:
    """Write items.jsonl.gz (the tuned model's and the untuned model's item records, `Task.item_records`, and
    every floor's, on both splits; harness/items.py) and return the record's part: `items_file`, `floors`, and
    the floor chosen on validation."""
    rows = [row for split in items.SPLITS
            for row in items.item_rows(split, items.TUNED_WHO, tuned_items[split])
            + items.item_rows(split, items.BASE_WHO, base_items[split])]
    floors, floor_rows = items.score_floors(task, train_rows, splits)
    items.write_items(run_dir, rows + floor_rows)
    return {"items_file": items.ITEMS_FILE, "floors": floors} | items.choose_floor(floors, base_val, base_test)


def name_base_model(model, model_cfg: DictConfig, cache: Path) -> dict[str, Any]:
    """Name the base in `adapter_config.json` the way the ecosystem does, the hub id (null for a tiny random
    model), so PeftModel.from_pretrained, serving engines and a hub upload find it; the local folder the run
    loaded goes in the record beside it (peft would otherwise write that machine's absolute path)."""
    hub_id = model_cfg.get("hub_id") if model_cfg.source != "tiny" else None
    for config in (getattr(model, "peft_config", None) or {}).values():
        config.base_model_name_or_path = hub_id
    local = local_folder(model_cfg, cache)
    return {"hub_id": hub_id, "local_path": local, "source": model_cfg.source}


def with_steps(eff: dict[str, Any], steps: int) -> dict[str, Any]:
    """The effective config with the run's resolved step count (what AdaLoRA's rank schedule is sized by)."""
    return eff | {"train": eff["train"] | {"max_steps": steps}}


def save_atomically(model, target: Path, plan=None) -> None:
    """Save into a temporary folder, then rename: a crash or a full disk never leaves a valid-looking adapter."""
    tmp = target.with_name(target.name + ".partial")
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        save_trained(model, plan, tmp) if plan is not None else model.save_pretrained(tmp)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    shutil.rmtree(target, ignore_errors=True)
    os.replace(tmp, target)


def print_summary(result: dict[str, Any], run_dir: Path) -> None:
    rank = f" r={result['r']} alpha={result['alpha']}" if result["r"] is not None else ""
    targets = f" targets={result['targets']}" if result["targets"] else ""
    lines = [
        f"run        {result['run_id']}  ({run_dir})",
        f"method     {result['method']}{rank}{targets}  on {result['model']} / {result['task']}",
        f"trainable  {result['params_trainable']:,} of {result['params_total']:,} params ({result['trainable_pct']:.3f}%)",
        f"memory     peak {format_bytes(result['peak_mem_bytes']) or 'n/a'} ({result['mem_kind']})",
        f"speed      {result['train_tokens_per_s']:.0f} tokens/s (non-padding), {result['train_runtime_s']:.1f} s training",
        f"saved      {format_bytes(result['adapter_bytes']) or 'n/a'} ({result['saved_to']}/)",
        f"score      {result['primary_metric']} {result['score']:.3f}  vs base {result['base_score']:.3f}"
        f"  (validation {result['val_score']:.3f})",
        f"budget     {result['train_steps']} steps = {result['train_epochs']:.2f} epochs of {result['train_rows']} rows",
    ]
    if result.get("status") != Status.OK.value:
        lines.append(f"status     {result['status']}: {result['reason']}")
    if not _in_sweep():  # a sweep prints its own table; these pointers are for the one-off run
        lines += next_steps(run_dir)
    print("\n".join(lines), flush=True)
    logging.getLogger("harness.log_file").info("summary\n%s", "\n".join(lines))


def _in_sweep() -> bool:
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    return HydraConfig.initialized() and HydraConfig.get().mode == RunMode.MULTIRUN


def next_steps(run_dir: Path) -> list[str]:
    """Where to look next after a one-off run: its folder, its report, three commands to try."""
    report = f"reports/{run_dir.name}"
    return [
        f"look at    {run_dir}/result.json (every measurement) and run.log",
        f"report     python -m analysis.report --runs {run_dir} --out {report}  ->  open {report}/report.html",
        "next       python -m harness.run method=full          # the reference: full fine-tuning, same task",
        "           make sweep TASK=classify                   # a grid of runs, resumable, with a summary table",
        "           make report                                # tables, figures and report.html over runs/",
    ]
