"""`extract`: format locking. A real tweet in, exactly one JSON object out, with a fixed schema:

    {"sentiment": "negative", "hashtags": ["#fail"], "mentions": ["@united"], "has_url": false}

The tweets and their sentiment (labelled by crowd panels) are `classify`'s, split the same way with the same
`data_seed`, so the two tasks never test on a tweet the other trains on (this matters for `multitask`). The
hashtags, mentions and the URL flag are read off the tweet text. The score is the mean field accuracy, an
answer with no decodable JSON object scoring 0 on every field; `json_valid_rate` is reported beside it.
"""

from __future__ import annotations

import json
import random
import re
from typing import Any

from harness.tasks.base import Floor, Task, constant, load_metric, majority
from harness.tasks.classify import balanced_pools, check_label, load_tweets

HASHTAG = re.compile(r"(?<![\w#])#\w+")
MENTION = re.compile(r"(?<![\w@])@\w+")
URL = re.compile(r"https?://\S+|\bwww\.\S+", re.IGNORECASE)
SCHEMA = ('{"sentiment": "positive" | "negative" | "neutral", "hashtags": [the #hashtags], '
          '"mentions": [the @mentions], "has_url": true | false}')


def expected_fields(text: str, sentiment: str) -> dict[str, Any]:
    """The object a correct answer holds, in the schema's key order."""
    return {"sentiment": sentiment, "hashtags": HASHTAG.findall(text), "mentions": MENTION.findall(text),
            "has_url": bool(URL.search(text))}


def extract_row(text: str, sentiment: str) -> dict[str, Any]:
    # The target is stored as a JSON string: datasets then never has to infer a type for empty lists.
    return {"text": text, "sentiment": sentiment, "target": json.dumps(expected_fields(text, sentiment), ensure_ascii=False)}


class ExtractTask(Task):
    name = "extract"
    primary_metric = "field_accuracy"
    prep_keys = ("data_seed", "min_confidence")
    fields = ("text", "sentiment")
    templates = (
        "Extract information from this tweet as one JSON object with exactly these keys:\n" + SCHEMA
        + "\nAnswer with the JSON object only.\n\nTweet: {text}",
        "Read the tweet below and output a single JSON object following the schema " + SCHEMA
        + ". No other text.\n\n{text}",
        "Tweet: {text}\n\nFill in this JSON schema for the tweet and return only the JSON: " + SCHEMA,
        "Turn this message into structured data. Return one JSON object of the form " + SCHEMA
        + " and nothing else.\n\nMessage: {text}",
        "Parse the tweet into JSON (" + SCHEMA + "). Output only valid JSON.\n\nTweet: {text}",
    )

    def builtin_pools(self) -> dict[str, list[dict[str, Any]]]:
        df = load_tweets(self.cfg.min_confidence)
        return balanced_pools(df, random.Random(self.cfg.data_seed), lambda r: extract_row(r["text"], r["sentiment"]))

    def row_from_record(self, record: dict[str, Any]) -> dict[str, Any]:
        return extract_row(str(record["text"]), check_label(record["sentiment"]))

    def render(self, row: dict[str, Any], template: int = 0) -> str:
        # str.format would read the schema's braces as fields
        return self.templates[template].replace("{text}", row["text"])

    def target(self, row: dict[str, Any]) -> str:
        return row["target"]

    def describe(self, row: dict[str, Any]) -> str:
        return row["text"]

    def floors(self, train_rows: list[dict[str, Any]]) -> dict[str, Floor]:
        """`majority`: one JSON object for every tweet, each field holding its most frequent value in the training
        targets (the majority sentiment, most likely no hashtags, no mentions, no URL; a tie: the first value as
        JSON text). It scores what guessing the usual answer per field scores; an answer of `{}` would score 0."""
        targets = [json.loads(self.target(r)) for r in train_rows]
        fields = list(dict.fromkeys(k for t in targets for k in t))
        modes = {f: json.loads(majority(json.dumps(t.get(f), sort_keys=True) for t in targets)) for f in fields}
        return {"majority": constant(json.dumps(modes, ensure_ascii=False))}

    def score(self, outputs: list[str], rows: list[dict[str, Any]], items_for: str | None = None) -> dict[str, Any]:
        return load_metric("json_fields").compute(predictions=outputs, references=[r["target"] for r in rows],
                                                  items_for=items_for)
