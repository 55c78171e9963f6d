"""Field accuracy of JSON answers against a reference object, as an offline `evaluate` module (format locking).

    evaluate.load("harness/metrics/json_fields").compute(predictions=[...], references=[...])

The first JSON object in the answer is decoded (code fences and text around it are allowed). Each reference
field is compared after canonicalisation: strings case-insensitively, lists as case-insensitive sets, other
values as they are. An answer with no decodable object scores 0 on every field, a missing or wrongly typed
field scores 0 on that field. Reports `field_accuracy` (mean over fields of per-field accuracy, computed with
scikit-learn), `json_valid_rate` and `<field>_accuracy` per field. With `items_for="field_accuracy"` the result also holds
`item_scores` (the share of the fields an answer got right) and `item_stats` ([score, 1]; their sums give the
corpus value, as every reference holds the same fields; harness/items.py).
"""

import json

import evaluate

from harness.items import mean_stats
from harness.metrics import string_pairs_info
from sklearn.metrics import accuracy_score

NO_MATCH = "\0unparseable"


def first_object(text):
    """The first JSON object in `text`, or None."""
    decoder = json.JSONDecoder()
    start = (text or "").find("{")
    while start != -1:
        try:
            value, _ = decoder.raw_decode(text, start)
            if isinstance(value, dict):
                return value
        except json.JSONDecodeError:
            pass
        start = text.find("{", start + 1)
    return None


def canonical(value):
    """A comparable string for a field value; types stay distinct (True vs "true")."""
    if isinstance(value, str):
        return "s:" + value.strip().lower()
    if isinstance(value, list):
        return "l:" + json.dumps(sorted({str(v).strip().lower() for v in value}))
    return "v:" + json.dumps(value, sort_keys=True)


class JsonFields(evaluate.Metric):
    def _info(self):
        return string_pairs_info("Mean per-field accuracy of JSON answers; unparseable answers score 0 on every field.",
                                 "predictions: model answers; references: JSON strings of the expected object")

    def _compute(self, predictions, references, items_for=None):
        parsed = [first_object(p) for p in predictions]
        refs = [json.loads(r) for r in references]
        names = sorted({k for r in refs for k in r})
        result = {}
        right = [0] * len(refs)  # fields each answer got right
        for name in names:
            truth = [canonical(r.get(name)) for r in refs]
            guess = [canonical(p[name]) if p is not None and name in p else NO_MATCH for p in parsed]
            result[f"{name}_accuracy"] = float(accuracy_score(truth, guess))
            right = [n + (t == g) for n, t, g in zip(right, truth, guess)]
        result["field_accuracy"] = sum(result[f"{n}_accuracy"] for n in names) / len(names) if names else 0.0
        result["json_valid_rate"] = sum(p is not None for p in parsed) / max(len(parsed), 1)
        if items_for == "field_accuracy":
            result["item_scores"] = [n / len(names) if names else 0.0 for n in right]
            result["item_stats"] = [mean_stats(s) for s in result["item_scores"]]
        return result
