"""Accuracy and macro-F1 over string labels (scikit-learn), as an offline `evaluate` module.

    evaluate.load("harness/metrics/classification").compute(predictions=[...], references=[...], labels=[...])

A prediction outside `labels` (e.g. an unparseable answer, given as "") is simply wrong.
"""

import evaluate

from harness.metrics import string_pairs_info
from sklearn.metrics import accuracy_score
from sklearn.metrics import f1_score


class Classification(evaluate.Metric):
    def _info(self):
        return string_pairs_info("Accuracy and macro-F1 for string labels.",
                                 "predictions, references: lists of strings; labels: the label set for macro-F1")

    def _compute(self, predictions, references, labels=None):
        labels = sorted(set(references)) if labels is None else list(labels)
        return {
            "accuracy": float(accuracy_score(references, predictions)),
            "macro_f1": float(f1_score(references, predictions, labels=labels, average="macro", zero_division=0)),
        }
