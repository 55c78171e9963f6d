"""`parity`: is a number even or odd? A task small enough to read whole: data, prompt, target, scorer, floor.

Copy to harness/tasks/parity.py, add `ParityTask` to SINGLE_TASKS in harness/tasks/mixture.py (the registry
`task=<name>` picks from) and `conf/task/parity.yaml` (below, in the extending guide); then
`python -m harness.run task=parity`.
"""

from __future__ import annotations

import random
import re
from collections import Counter
from typing import Any

from harness.tasks.base import Task, load_metric

LABELS = ["even", "odd"]


def parse_label(answer: str) -> str:
    """The first label word of an answer ('Odd.' -> odd); '' when it names none (scored as wrong)."""
    return next((w for w in re.findall(r"[a-z]+", answer.lower()) if w in LABELS), "")


class ParityTask(Task):
    name = "parity"
    primary_metric = "accuracy"
    labels = LABELS                        # encoders classify over these; causal LMs answer one word
    prep_keys = ("data_seed", "n_numbers")  # the config keys the prepared data depends on (hashed into its folder)
    templates = ("Is {number} even or odd? Answer with one word.",)

    def builtin_pools(self) -> dict[str, list[dict[str, Any]]]:
        """Every row of each split, the same for the same data_seed (the harness caches and fingerprints them)."""
        rng = random.Random(self.cfg.data_seed)
        numbers = rng.sample(range(10_000), self.cfg.n_numbers)
        rows = [{"number": n, "label": LABELS[n % 2]} for n in numbers]
        n_eval = len(rows) // 5
        return {"test": rows[:n_eval], "validation": rows[n_eval:2 * n_eval], "train": rows[2 * n_eval:]}

    def target(self, row: dict[str, Any]) -> str:
        return row["label"]

    def encoder_text(self, row: dict[str, Any]) -> str:
        return str(row["number"])

    def predicted_label(self, output: str) -> str:
        return parse_label(output)  # lets the harness detect a collapse onto one class

    def score(self, outputs: list[str], rows: list[dict[str, Any]], **kwargs: Any) -> dict[str, float]:
        """Accuracy (the primary metric) and macro-F1, from the shipped `evaluate` module (harness/metrics/)."""
        metric = load_metric("classification")
        return metric.compute(predictions=[parse_label(o) for o in outputs],
                              references=[r["label"] for r in rows], labels=LABELS)

    def floors(self, train_rows: list[dict[str, Any]]) -> dict[str, Any]:
        """Trivial baselines a tuned model must beat, scored by `score` like a model: `majority` answers every
        row with the most frequent training label (a tie: the alphabetically first)."""
        counts = Counter(self.target(r) for r in train_rows)
        answer = min(counts, key=lambda label: (-counts[label], label)) if counts else ""
        return {"majority": lambda rows: [answer] * len(rows)}
