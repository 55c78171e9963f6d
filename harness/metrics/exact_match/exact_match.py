"""Exact match after light normalisation, as an offline `evaluate` module (closed-book question answering).

    evaluate.load("harness/metrics/exact_match").compute(predictions=[...], references=[...])

Normalisation (lower case, punctuation and extra spaces removed, only the first line of the answer) forgives
"Lisbon." for "Lisbon" but nothing else. `contains` is looser: the normalised reference appears anywhere in the
normalised prediction (a chatty but right answer). Both are accuracies (scikit-learn) over normalised strings.
With `items_for="exact_match"` or `"contains"` the result also holds `item_scores` (1/0) and `item_stats`
([score, 1], whose sums give the corpus value; harness/items.py).
"""

import re
import string

import evaluate

from harness.items import mean_stats
from harness.metrics import string_pairs_info
from sklearn.metrics import accuracy_score

PUNCT = re.compile("[" + re.escape(string.punctuation) + "]")


def normalize(text):
    first = (text or "").strip().split("\n")[0]
    return " ".join(PUNCT.sub(" ", first.lower()).split())


class ExactMatch(evaluate.Metric):
    def _info(self):
        return string_pairs_info("Exact-match and contains accuracy over normalised strings.",
                                 "predictions, references: lists of strings")

    def _compute(self, predictions, references, items_for=None):
        preds = [normalize(p) for p in predictions]
        refs = [normalize(r) for r in references]
        # a reference that normalises to nothing is never "contained" (the empty string is in every string)
        contained = [r if r and f" {r} " in f" {p} " else "\0" for p, r in zip(preds, refs)]
        result = {"exact_match": float(accuracy_score(refs, preds)), "contains": float(accuracy_score(refs, contained))}
        if items_for in result:
            answers = preds if items_for == "exact_match" else contained
            result["item_scores"] = [float(a == r) for a, r in zip(answers, refs)]
            result["item_stats"] = [mean_stats(s) for s in result["item_scores"]]
        return result
