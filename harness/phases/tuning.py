"""The train phase: Trainer with the run's callbacks (memory, divergence, update check, validation curve, a
halving rung, tracking), then what training measured; a divergence, an update that never moved, or a rung
ends the run here."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from omegaconf import OmegaConf

from harness import distributed, measure
from harness.config import resumable
from harness.adalora import adalora_record
from harness.methods import method_callbacks
from harness.packed_attention import evaluation_attention
from harness.phases.context import RunContext
from harness.results import Status
from harness.tracking import Tracker
from harness.training import (DivergenceGuard, LogToFile, StopAtRung, build_trainer, last_checkpoint, throughput,
                              training_arguments)
from harness.training_budget import ValidationCurve
from harness.update_check import UpdateCheck, stuck_reason

log = logging.getLogger("harness")


def train(ctx: RunContext) -> dict[str, Any]:
    spec, model = ctx.spec, ctx.model
    ctx.tracker = _tracker(ctx)
    with ctx.timed("tokenise"):
        train_ds = ctx.task.train_dataset(ctx.data["train"], ctx.tokenizer, ctx.kind, spec.train.max_seq_len)
    peak, guard, update = measure.PeakMemory(), DivergenceGuard(), UpdateCheck(model, spec.method.name)
    steps = measure.StepTimer()
    callbacks = [peak, guard, update, steps, LogToFile(), *method_callbacks(model, ctx.plan), *ctx.tracker.callbacks]
    curve, subset = _validation_curve(ctx)
    rung = StopAtRung(spec.cfg.rung_step) if spec.cfg.get("rung_step") else None
    callbacks += [c for c in (curve, rung) if c is not None]
    # a method whose checkpoint cannot resume it (AdaLoRA) writes none: a re-run starts again from step 0
    train = spec.train if resumable(spec.cfg.method) else OmegaConf.merge(spec.train, {"save_steps": None})
    args = training_arguments(train, spec.train.lr, spec.precision, spec.seed, ctx.run_dir / "checkpoints",
                              max_steps=ctx.steps, dist=distributed.training_kwargs(spec.cfg.dist))
    with ctx.timed("trainer_setup"):
        ctx.trainer = trainer = build_trainer(model, ctx.tokenizer, train_ds, args, ctx.kind, callbacks)
    resume_from = last_checkpoint(ctx.run_dir / "checkpoints")
    if resume_from:
        log.info("resuming from %s", resume_from)
    with ctx.timed("train_call"):  # optimizer set-up + loop + Trainer's bookkeeping
        train_output = trainer.train(resume_from_checkpoint=resume_from)
    if steps.median() is not None:
        ctx.timings["train_step_median"] = steps.median()
    eval_s = curve.seconds if curve else 0.0
    resumed_steps = int(Path(resume_from).name.rsplit("-", 1)[-1]) if resume_from else 0
    trained = trainer.data_collator.trained((trainer.state.global_step - resumed_steps) * spec.train.grad_accum)
    part = throughput(train_output, trainer.state, eval_s) | peak.result() | {
        "resumed_from": resume_from and Path(resume_from).name,
        "largest_batch": trained["largest"], "train_steps_done": trainer.state.global_step,
        "train_epochs_done": trainer.state.epoch, "train_examples": trained["examples"],
        "eval_s": round(eval_s, 3), "eval_subset": len(subset) if curve else 0,
        "val_curve": [p for p in ctx.earlier_curve if p["step"] <= resumed_steps] + (curve.points if curve else []),
        "loss_curve": [(h["step"], h["loss"]) for h in trainer.state.log_history if "loss" in h]}
    part["update_check"], stuck = update.report()
    part |= adalora_record(model) or {}  # AdaLoRA: the schedule's end step and what the pruning kept
    if "dist" in spec.effective:  # every rank's share, gathered; then rank 0 alone goes on
        part |= _gathered(ctx, part, trained["tokens"])
        ctx.leave = not ctx.main and not ctx.sharded
    if rung and rung.stopped and guard.diverged_at is None:  # a halving rung: resumed later, or never
        part["rung_step"] = trainer.state.global_step
        ctx.end(Status.PAUSED, f"stopped at successive-halving rung step {trainer.state.global_step} (checkpoint kept)")
    elif guard.diverged_at is not None:  # nothing worth scoring or saving
        ctx.end(Status.DIVERGED, f"non-finite loss at step {guard.diverged_at}")
    elif stuck:
        ctx.end(Status.FAILED, stuck_reason(stuck, part["update_check"]))
    return part


def _tracker(ctx: RunContext) -> Tracker:
    """One W&B run: rank 0's."""
    spec = ctx.spec
    tags = [f"method:{spec.method.name}", f"task:{spec.task.name}", f"model:{spec.model.name}", f"r:{spec.r}",
            f"targets:{spec.identity['targets']}"]
    tracking = spec.cfg.tracking if ctx.main else OmegaConf.create({"backend": "none"})
    return Tracker(tracking, ctx.run_dir, spec.run_id, spec.effective, tags, spec.cfg.group, spec.cfg.name)


def _validation_curve(ctx: RunContext) -> tuple[ValidationCurve | None, Any]:
    """The validation curve when train.eval_every is set (DDP: the other ranks wait for it at their next exchange)."""
    spec = ctx.spec
    if not spec.train.eval_every or not (ctx.main or ctx.sharded):
        return None, None
    val_split = ctx.data["validation"]
    subset = val_split.select(range(min(spec.train.eval_subset, len(val_split))))

    def score_subset() -> float:
        with evaluation_attention(ctx.model):
            return ctx.score(subset)[0][ctx.task.primary_metric]

    return ValidationCurve(spec.train.eval_every, score_subset, ctx.tracker.log), subset


def _gathered(ctx: RunContext, part: dict[str, Any], tokens: int) -> dict[str, Any]:
    ranks = distributed.gather({"peak_mem_bytes": part.get("peak_mem_bytes"), "examples": part["train_examples"],
                                "tokens": tokens, "runtime_s": part["train_runtime_s"],
                                "checksum": distributed.weights_checksum(ctx.model)})
    return distributed.dist_record(ctx.spec.effective["dist"]["strategy"], ranks) | {
        "train_examples": sum(r["examples"] for r in ranks), "dist_wrapper": type(ctx.trainer.model_wrapped).__name__}
