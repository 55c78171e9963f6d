"""Accuracy and macro-F1 over string labels (scikit-learn), as an offline `evaluate` module.

    evaluate.load("harness/metrics/classification").compute(predictions=[...], references=[...], labels=[...])

A prediction outside `labels` (e.g. an unparseable answer, given as "") is simply wrong. With
`items_for="accuracy"` or `"macro_f1"` the result also holds `item_scores` and `item_stats`, each item's score
and the statistics whose sums give the corpus value (harness/items.py).
"""

import evaluate

from harness.items import confusion_stats, mean_stats
from harness.metrics import string_pairs_info
from sklearn.metrics import accuracy_score
from sklearn.metrics import f1_score


class Classification(evaluate.Metric):
    def _info(self):
        return string_pairs_info("Accuracy and macro-F1 for string labels.",
                                 "predictions, references: lists of strings; labels: the label set for macro-F1")

    def _compute(self, predictions, references, labels=None, items_for=None):
        labels = sorted(set(references)) if labels is None else list(labels)
        result = {
            "accuracy": float(accuracy_score(references, predictions)),
            "macro_f1": float(f1_score(references, predictions, labels=labels, average="macro", zero_division=0)),
        }
        if items_for == "accuracy":
            result["item_scores"] = [float(p == r) for p, r in zip(predictions, references)]
            result["item_stats"] = [mean_stats(s) for s in result["item_scores"]]
        elif items_for == "macro_f1":
            index = {label: i for i, label in enumerate(labels)}
            result["item_scores"] = [float(p == r) for p, r in zip(predictions, references)]
            result["item_stats"] = [confusion_stats(index[r], index.get(p), len(labels))
                                    for p, r in zip(predictions, references)]
        return result
