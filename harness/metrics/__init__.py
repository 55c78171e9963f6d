"""The task scorers as offline `evaluate` modules, one folder each, loaded by path
(`evaluate.load("harness/metrics/<name>")`: the hub copies cannot be fetched here), and what they share."""

from __future__ import annotations

import datasets
import evaluate

# every scorer compares a model's answer string with a reference string
STRING_PAIRS = datasets.Features({"predictions": datasets.Value("string"), "references": datasets.Value("string")})


def string_pairs_info(description: str, inputs_description: str, citation: str = "") -> evaluate.MetricInfo:
    """The MetricInfo of a scorer over (prediction, reference) string pairs."""
    return evaluate.MetricInfo(description=description, citation=citation, inputs_description=inputs_description,
                               features=STRING_PAIRS)
