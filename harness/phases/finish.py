"""The phases after training: the tuned model's scores, the earlier stages' tasks (a continual stage), and the
save (adapter or model, item records, floors, the final status)."""

from __future__ import annotations

import logging
import os
import shutil
import time
from pathlib import Path
from typing import Any

from harness import items, measure
from harness.forgetting import probe_loss, sentence_embeddings, similarity_forgetting
from harness.lineage import score_earlier_tasks
from harness.methods import discard_plan_files, save_trained
from harness.models import local_folder
from harness.phases.context import RunContext
from harness.results import Status
from harness.tasks import get_task
from harness.training_budget import collapse_reason

log = logging.getLogger("harness")
N_SAMPLES = 5  # input / reference / output triples kept in the record


def scores(ctx: RunContext) -> dict[str, Any]:
    """The tuned model on validation (for every choice) and test (once, for the record), and the forgetting probe."""
    t0 = time.perf_counter()
    task = ctx.task
    val_metrics, val_items, val_outputs = ctx.score_items(ctx.data["validation"])
    metrics, test_items, outputs = ctx.score_items(ctx.data["test"])
    ctx.outputs = {"validation": val_outputs, "items": {"validation": val_items, "test": test_items}}
    t_probe = time.perf_counter()
    batch = ctx.spec.train.eval_batch_size
    with ctx.timed("forgetting_probe"):
        if ctx.kind == "causal_lm":  # forgetting: loss on general text after training minus before
            after = probe_loss(ctx.model, ctx.tokenizer, ctx.probe, batch)
            part = {"forgetting_after": after, "forgetting": after - ctx.record["forgetting_before"],
                    "forgetting_probe": "lm-loss"}
        else:
            part = similarity_forgetting(ctx.probe_before, sentence_embeddings(ctx.model, ctx.tokenizer, ctx.probe, batch))
    rows = list(ctx.data["test"])[:N_SAMPLES]
    metric = task.primary_metric
    part |= {"score": metrics[metric], "primary_metric": metric, "metrics": metrics,
             "val_score": val_metrics[metric], "val_metrics": val_metrics,
             "samples": [{"input": task.describe(r), "reference": task.target(r), "output": o}
                         for r, o in zip(rows, outputs)],
             "final_eval_s": round(time.perf_counter() - t0, 3), "final_probe_s": round(time.perf_counter() - t_probe, 3)}
    log.info("tuned model: %s %.4f on test, %.4f on validation (%.1f s)", metric, metrics[metric],
             val_metrics[metric], part["final_eval_s"])
    return part


def earlier_stages(ctx: RunContext) -> dict[str, Any]:
    """A continual stage: forgetting of the earlier stages' tasks, and of general text since the root's base."""
    if ctx.init is None:
        return {}
    t0 = time.perf_counter()

    def score_task(task_cfg) -> tuple[dict[str, float], str]:
        earlier = get_task(task_cfg, ctx.cache)
        return ctx.score(earlier.splits()["test"], earlier)[0], earlier.primary_metric

    part: dict[str, Any] = {"earlier_tasks": score_earlier_tasks(ctx.init, score_task)}
    if ctx.kind == "causal_lm" and ctx.init.get("root_forgetting_before") is not None:
        part["forgetting_total"] = ctx.record["forgetting_after"] - ctx.init["root_forgetting_before"]
    part["earlier_eval_s"] = round(time.perf_counter() - t0, 3)
    log.info("earlier tasks: %s (%.1f s)", ", ".join(f"{e['task']} {e['score_now']:.4f} (was {e['score_at_stage']:.4f})"
                                                     for e in part["earlier_tasks"]), part["earlier_eval_s"])
    return part


def save(ctx: RunContext) -> dict[str, Any]:
    """Save what was trained (a collective under FSDP / ZeRO-3: Trainer gathers the full state dict, rank 0
    writes it), the item records and floors, and end the run ok or collapsed."""
    spec, task = ctx.spec, ctx.task
    saved = ctx.run_dir / ("model" if ctx.plan.peft_config is None else "adapter")
    part: dict[str, Any] = {"base_model": name_base_model(ctx.model, spec.model, ctx.cache)}
    with ctx.timed("save_weights"):
        if ctx.sharded:
            ctx.trainer.save_model(str(saved))
        else:
            save_atomically(ctx.model, saved, ctx.plan)
    if not ctx.main:
        ctx.leave = True
        return part
    discard_plan_files(ctx.plan)
    shutil.rmtree(ctx.run_dir / "checkpoints", ignore_errors=True)  # only needed to resume an unfinished run
    val_split, test_split = ctx.data["validation"], ctx.data["test"]
    part |= write_run_items(task, ctx.run_dir, list(ctx.data["train"]),
                            {"validation": list(val_split), "test": list(test_split)}, ctx.outputs["items"],
                            ctx.base_items, base_val=ctx.record["base_val_score"], base_test=ctx.record["base_score"])
    one_class = task.labels and task.one_class_is_collapse
    collapsed = collapse_reason(ctx.record["loss_curve"],
                                [task.predicted_label(o) for o in ctx.outputs["validation"]] if one_class else None,
                                [task.target(r) for r in val_split] if one_class else None)
    ctx.end(Status.COLLAPSED if collapsed else Status.OK, collapsed)
    return part | {"adapter_bytes": measure.dir_bytes(saved), "saved_to": saved.name}


def write_run_items(task, run_dir, train_rows: list[dict[str, Any]], splits: dict[str, list[dict[str, Any]]],
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


def name_base_model(model, model_cfg, cache) -> dict[str, Any]:
    """Name the base in `adapter_config.json` the way the ecosystem does, the hub id (null for a tiny random
    model), so PeftModel.from_pretrained, serving engines and a hub upload find it; the local folder the run
    loaded goes in the record beside it (peft would otherwise write that machine's absolute path)."""
    hub_id = model_cfg.get("hub_id") if model_cfg.source != "tiny" else None
    for config in (getattr(model, "peft_config", None) or {}).values():
        config.base_model_name_or_path = hub_id
    local = local_folder(model_cfg, cache)
    return {"hub_id": hub_id, "local_path": local, "source": model_cfg.source}


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
