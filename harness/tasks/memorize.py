"""`memorize`: random-label memorisation on real text, a cheap stand-in for LoRA's capacity limit (claim 18,
"LoRA Without Regret": LoRA matches full FT until the data holds more information than the adapter can store).

Each tweet of the classify corpus gets a label drawn uniformly from `n_classes` by a seeded RNG (`label_seed`),
independent of its text, so nothing but memorisation lowers the training loss. The validation and test splits ARE
the training rows (the first `min(n_eval, n_train)` of them): accuracy there measures how many random labels the
tuned model stored; chance is 1 / n_classes.

The classification head is frozen (`freeze_head: true` in conf/task/memorize.yaml; harness/methods.freeze_head):
a trained head (peft's default `modules_to_save` for sequence classification) would itself memorise labels from
fixed features, and the capacity measured would be the head's, not the adapter's. Full FT freezes it too, so
both sides route every bit through the transformer body.
"""

from __future__ import annotations

import random
from typing import Any

import datasets
from omegaconf import DictConfig

from harness.errors import ConfigError
from harness.tasks.base import Task, load_metric
from harness.tasks.classify import load_tweets


class MemorizeTask(Task):
    name = "memorize"
    primary_metric = "accuracy"
    prep_keys = ("data_seed", "label_seed", "n_classes", "min_confidence")
    one_class_is_collapse = False  # an adapter that stores nothing may predict one class: chance, not a failure
    templates = ("Which class (one of {choices}) was this text assigned? Answer with the class alone.\n\nText: {text}",)

    def __init__(self, cfg: DictConfig, cache) -> None:
        super().__init__(cfg, cache)
        n = int(cfg.get("n_classes") or 0)
        if n < 2:
            raise ConfigError(f"task.n_classes={cfg.get('n_classes')} must be at least 2 (random labels need a choice)")
        self.labels = [f"c{i}" for i in range(n)]  # short label words, one token or two for a causal LM

    def builtin_pools(self) -> dict[str, list[dict[str, Any]]]:
        texts = load_tweets(self.cfg.min_confidence)["text"].tolist()
        random.Random(self.cfg.data_seed).shuffle(texts)
        draw = random.Random(self.cfg.label_seed)  # labels: their own RNG, independent of the text order
        rows = [{"text": t, "label": self.labels[draw.randrange(len(self.labels))]} for t in texts]
        return {"train": rows, "validation": rows, "test": rows}  # scored on what it was trained on

    def splits(self) -> datasets.DatasetDict:
        """Train: the first n_train rows; validation and test: the first min(n_eval, n_train) of those same rows."""
        data = super().splits()
        n_scored = min(int(self.cfg.n_eval), len(data["train"]))
        return datasets.DatasetDict({"train": data["train"],
                                     "validation": data["validation"].select(range(n_scored)),
                                     "test": data["test"].select(range(n_scored))})

    def render(self, row: dict[str, Any], template: int = 0) -> str:
        return self.templates[template].format(choices=", ".join(self.labels), **row)

    def target(self, row: dict[str, Any]) -> str:
        return row["label"]

    def encoder_text(self, row: dict[str, Any]) -> str:
        return row["text"]

    def predicted_label(self, output: str) -> str:
        words = output.strip().lower().split()
        return words[0].strip(".,:;!") if words else ""

    def score(self, outputs: list[str], rows: list[dict[str, Any]], items_for: str | None = None) -> dict[str, Any]:
        metric = load_metric("classification")
        predictions = [self.predicted_label(o) for o in outputs]
        predictions = [p if p in self.labels else "" for p in predictions]
        return metric.compute(predictions=predictions, references=[r["label"] for r in rows], labels=self.labels,
                              items_for=items_for)
