"""Validation: the training budget in steps, the periodic validation curve, and the collapse check.

Selection (which learning rate a variant keeps) reads the validation split only; the test split is scored once,
after training, and is never used for a choice (harness/selection.py).

- `planned_steps`: `train.epochs` -> optimizer steps, the way transformers' Trainer converts epochs itself
  (`ceil(epochs * update steps per epoch)`), so schedules, AdaLoRA's budget and the record see one step count.
- `ValidationCurve`: every `train.eval_every` steps, the task's own scorer on a fixed validation subset. Its time
  is kept apart (`eval_s`) and subtracted from the training time, so tokens/s never includes evaluation.
- `collapse_reason`: a run can stay finite and still fail; such a run is recorded `collapsed`, not `ok`.
"""

from __future__ import annotations

import logging
import math
import time
from collections import Counter
from collections.abc import Callable
from typing import Any

from transformers import TrainerCallback

log = logging.getLogger("harness")
# A classifier has collapsed onto one class when that class takes at least ONE_CLASS_SHARE of the validation
# predictions AND at least SHARE_MARGIN more than its share of the references: on balanced data (classify's builtin
# 1/3 each, or 1/2 for two classes) that is the 95% rule alone, while on imbalanced data a model that mostly names the
# majority class the references mostly hold (95% of predictions where 90% of the rows are that class) is not called
# collapsed. Below MIN_ROWS rows a one-class answer is too likely by chance to call. An answer naming no class is a
# miss, not a class.
ONE_CLASS_SHARE = 0.95
SHARE_MARGIN = 0.10
MIN_ROWS = 30
# The training loss must end this much (relative) above its start: a flat loss wanders by less. Start and end are
# means over the first and last third of the logged losses, and need at least LOSS_POINTS of them: one logged
# batch's loss swings by more than that from batch to batch.
LOSS_RISE = 0.05
LOSS_POINTS = 6


def steps_per_epoch(n_rows: int, batch_size: int, grad_accum: int) -> int:
    batches = math.ceil(n_rows / batch_size)
    return max(math.ceil(batches / grad_accum), 1)


def planned_steps(train: Any, n_rows: int) -> int:
    """Optimizer steps of the run: `train.max_steps`, or `train.epochs` passes over `n_rows` training rows."""
    if train.get("max_steps") is not None:
        return int(train.max_steps)
    return max(math.ceil(float(train.epochs) * steps_per_epoch(n_rows, train.batch_size, train.grad_accum)), 1)


def budget_record(steps: int, n_rows: int, train: Any) -> dict[str, Any]:
    """What a run trains: optimizer steps, passes over the training rows, and how the budget was given."""
    per_epoch = steps_per_epoch(n_rows, train.batch_size, train.grad_accum)
    return {"train_steps": steps, "train_epochs": round(steps / per_epoch, 4), "train_rows": n_rows,
            "budget_unit": "epochs" if train.get("max_steps") is None else "steps"}


class ValidationCurve(TrainerCallback):
    """Scores a fixed validation subset every `every` optimizer steps (and at the last step).

    The loss logged at that step goes beside it: at an evaluation step the callback asks Trainer to log
    (`should_log`), and evaluates in `on_log`, after Trainer has averaged the training loss up to that step."""

    def __init__(self, every: int, score: Callable[[], float], log_metrics: Callable[[dict[str, Any], int], None]):
        self.every, self.score, self.log_metrics = every, score, log_metrics
        self.points: list[dict[str, Any]] = []
        self.seconds = 0.0

    def _due(self, state) -> bool:
        return state.global_step > 0 and (state.global_step % self.every == 0 or state.global_step == state.max_steps)

    def on_step_end(self, args, state, control, **kwargs):
        if self._due(state):
            control.should_log = True

    def on_log(self, args, state, control, logs=None, **kwargs):
        logs = logs or {}
        if "loss" not in logs or not self._due(state) or (self.points and self.points[-1]["step"] == state.global_step):
            return
        model = kwargs.get("model")
        start = time.perf_counter()
        value = self.score()
        if model is not None:
            model.train()
        self.seconds += time.perf_counter() - start
        point = {"step": state.global_step, "epoch": state.epoch, "tokens": int(state.num_input_tokens_seen),
                 "val_score": value, "train_loss": float(logs["loss"])}
        self.points.append(point)
        log.info("step %d: validation %.4f (subset), train loss %.4f", point["step"], value, point["train_loss"])
        self.log_metrics({"val/score": value, "val/tokens": point["tokens"], "val/epoch": point["epoch"]},
                         state.global_step)


def collapse_reason(loss_curve: list[tuple[int, float]], predictions: list[str] | None = None,
                    references: list[str] | None = None) -> str | None:
    """Why a finished, finite run counts as collapsed, or None.

    - its training loss ended above where it started (the mean of the last third of the logged losses more than
      LOSS_RISE above the mean of the first third);
    - a classifier's validation predictions fell onto one class: at least ONE_CLASS_SHARE of them, and at least
      SHARE_MARGIN above that class's share of the references (so imbalanced data that holds mostly one class
      does not count as a collapse when the predictions follow it).
    A run that merely fails to beat the untuned model is not collapsed: that is a result."""
    losses = [loss for _, loss in loss_curve if loss is not None and math.isfinite(loss)]
    if len(losses) >= LOSS_POINTS:
        third = len(losses) // 3
        start, end = sum(losses[:third]) / third, sum(losses[-third:]) / third
        if end > start * (1 + LOSS_RISE):
            return f"training loss ended at {end:.4f}, above its start {start:.4f}"
    named = [p for p in predictions or [] if p]
    if named and references and len(predictions) >= MIN_ROWS:
        label, count = Counter(named).most_common(1)[0]
        share = count / len(predictions)
        ref_share = sum(r == label for r in references) / len(references)
        if share >= ONE_CLASS_SHARE and share - ref_share >= SHARE_MARGIN - 1e-9:
            return (f"predictions degenerate onto one class ({label!r} for {share:.0%} of validation rows, "
                    f"{ref_share:.0%} of the references)")
    return None
