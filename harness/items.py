"""Per-item records: every scored item of a run, so analysis can resample items and pair methods on them.

Beside `result.json` each finished run writes `items.jsonl.gz`: one JSON line per (split, who, item):

    {"split": "test", "who": "tuned", "id": "3f2a...", "score": 1.0, "pred": "positive", "stats": [1.0, 1.0]}

- `split`: "validation" or "test".
- `who`: "tuned" (the trained model), "base" (the untuned model, stored with every run's records because
  `.cache/` is not committed), or "floor:<name>" (a trivial baseline of `Task.floors()`, e.g. floor:majority,
  floor:copy), all scored on the very same items.
- `id`: a stable item id (a hash of the row's content, so it survives re-preparing the same data).
- `score`: the item's own score on the task's primary metric (1/0 for accuracy, sentence-level for chrF).
- `pred`: the prediction as text, for generation tasks only (null for encoders / label tasks).
- `stats`: sufficient statistics whose column sums give the corpus-level primary metric through
  `aggregate(metric, sums)`; a bootstrap resample of items is then a sum, never a re-scoring.

Metrics that are a mean of per-item scores use stats [score, 1]. Corpus metrics register their own aggregator
in `AGGREGATORS` (chrF: sacrebleu's n-gram statistics; macro-F1: a flattened one-hot confusion matrix).
"""

from __future__ import annotations

import gzip
import hashlib
import json
import os
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import numpy as np

ITEMS_FILE = "items.jsonl.gz"
SPLITS = ("validation", "test")


def item_id(row: dict[str, Any]) -> str:
    """A stable id for a data row: the hash of its content (keys sorted)."""
    return hashlib.sha1(json.dumps(row, sort_keys=True, ensure_ascii=False, default=str).encode()).hexdigest()[:12]


def mean_stats(score: float) -> list[float]:
    """Stats of a metric that is the mean of per-item scores."""
    return [float(score), 1.0]


def _mean(sums: np.ndarray) -> float:
    return float(sums[0] / sums[1]) if sums[1] else float("nan")


# metric name -> function of the column sums of `stats`; metrics not listed are means of per-item scores
AGGREGATORS: dict[str, Callable[[np.ndarray], float]] = {}


def aggregate(metric: str, sums: np.ndarray | Iterable[float]) -> float:
    """The corpus-level `metric` from the column sums of its items' stats."""
    return AGGREGATORS.get(metric, _mean)(np.asarray(sums, dtype=float))


def write_items(run_dir: str | Path, rows: Iterable[dict[str, Any]]) -> Path:
    """Write (atomically) the run's item rows; deterministic bytes for the same rows (gzip mtime 0)."""
    path = Path(run_dir) / ITEMS_FILE
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "wb") as raw, gzip.GzipFile(fileobj=raw, mode="wb", mtime=0) as fh:
        for row in rows:
            fh.write((json.dumps(row, ensure_ascii=False, sort_keys=True) + "\n").encode())
    os.replace(tmp, path)
    return path


def read_items(run_dir: str | Path) -> list[dict[str, Any]] | None:
    """The run's item rows, or None when the run has no per-item records (older records)."""
    path = Path(run_dir) / ITEMS_FILE
    if not path.exists():
        return None
    with gzip.open(path, "rt", encoding="utf-8") as fh:
        return [json.loads(line) for line in fh if line.strip()]
