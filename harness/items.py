"""Per-item records: every scored item of a run, so analysis can resample items and pair methods on them.

Beside `result.json` each finished run writes `items.jsonl.gz`: one JSON line per (split, who, item):

    {"split": "test", "who": "tuned", "id": "3f2a...", "score": 1.0, "pred": "positive", "stats": [1.0, 1.0]}

- `split`: "validation" or "test".
- `who`: "tuned" (the trained model), "base" (the untuned model, stored with every run's records because
  `.cache/` is not committed), or "floor:<name>" (a trivial baseline of `Task.floors()`, e.g. floor:majority,
  floor:copy), all scored on the very same items.
- `id`: a stable item id (a hash of the row's content, so it survives re-preparing the same data).
- `score`: the item's own score on the task's primary metric (1/0 for accuracy, sentence-level for chrF and SARI).
- `pred`: the prediction as text: a generation task's answer; for label tasks (classify, encoder or causal LM)
  the label the answer names ("" for none), short (`Task.item_pred`); null for floor rows.
- `stats`: sufficient statistics whose column sums give the corpus-level primary metric through
  `aggregate(metric, sums)`; a bootstrap resample of items is then a sum, never a re-scoring.

Metrics that are a mean of per-item scores use stats [score, 1]. Corpus metrics register their own aggregator
in `AGGREGATORS`:
- `chrf` / `bleu`: sacrebleu's per-sentence n-gram statistics (chrF: [hyp, ref, match] per character order,
  18 numbers; BLEU: hyp length, ref length, matches and totals per order, 10 numbers), scaled to 0..1 as the
  task reports them;
- `macro_f1`: a flattened one-hot confusion matrix, K rows (the true label) by K + 1 columns (the predicted
  label, the last column for an answer that names no label), `confusion_stats`;
- `mean_score` (multitask / instruct, the mean of the components' primary scores): self-describing stats,
  `mixture_stats`: a header [1, C, code_1, width_1, ..., code_C, width_C] (codes index `METRIC_CODES`), then per
  component a block [n_c, *stats_c] that is zero but for the item's own component. Every item carries the
  header, so the sums divided by their first column give it back; a component with no item in a resample is
  left out of the mean, as the task's own scorer does.

Additions to the format (result.json): `items_file` names this file; `floors` {name: {"validation", "test"}}
holds the trivial floors' scores (`who` "floor:<name>"); `floor_name` is the best candidate on validation among
those floors and "base" (the untuned model, `who` "base"; `floor_who` maps a name to its `who`), with its
`floor_score` on test and `floor_val_score`. Floor rows carry `pred` null: a floor's answer is a function of
the row and the training data, re-derivable from the task's `floors`.
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
BASE_WHO, TUNED_WHO, FLOOR_PREFIX = "base", "tuned", "floor:"
# the metrics a mixture's header can name, by position (append only: records refer to them by index)
METRIC_CODES = ("accuracy", "exact_match", "contains", "field_accuracy", "chrf", "bleu", "macro_f1", "sari")


def item_id(row: dict[str, Any]) -> str:
    """A stable id for a data row: the hash of its content (keys sorted)."""
    return hashlib.sha1(json.dumps(row, sort_keys=True, ensure_ascii=False, default=str).encode()).hexdigest()[:12]


def mean_stats(score: float) -> list[float]:
    """Stats of a metric that is the mean of per-item scores."""
    return [float(score), 1.0]


def _mean(sums: np.ndarray) -> float:
    return float(sums[0] / sums[1]) if sums[1] else float("nan")


def floor_who(name: str) -> str:
    """The `who` of a floor candidate's rows: "base" for the untuned model, "floor:<name>" otherwise."""
    return BASE_WHO if name == BASE_WHO else FLOOR_PREFIX + name


def _sacrebleu(metric: str):
    from sacrebleu.metrics import BLEU, CHRF  # the defaults sacrebleu.corpus_chrf / corpus_bleu use

    return CHRF() if metric == "chrf" else BLEU()


def sentence_stats(metric: str, predictions: list[str], references: list[str]) -> list[list[int]]:
    """sacrebleu's per-sentence statistics of `chrf` or `bleu` (their column sums give the corpus score)."""
    return [list(map(int, s)) for s in _sacrebleu(metric)._extract_corpus_statistics(predictions, [references])]


def _sacrebleu_score(metric: str) -> Callable[[np.ndarray], float]:
    return lambda sums: float(_sacrebleu(metric)._compute_score_from_stats(list(sums)).score) / 100.0


def confusion_stats(truth: int, predicted: int | None, n_labels: int) -> list[float]:
    """One item of a K x (K + 1) confusion matrix, flattened; `predicted` None (or out of range): no label named."""
    cell = [0.0] * (n_labels * (n_labels + 1))
    column = predicted if predicted is not None and 0 <= predicted < n_labels else n_labels
    cell[truth * (n_labels + 1) + column] = 1.0
    return cell


def _macro_f1(sums: np.ndarray) -> float:
    """scikit-learn's f1_score(average="macro", labels=the K labels, zero_division=0) from a summed matrix."""
    k = int(round((-1 + np.sqrt(1 + 4 * len(sums))) / 2))
    matrix = sums.reshape(k, k + 1)
    tp = np.diag(matrix[:, :k])
    fp, fn = matrix[:, :k].sum(0) - tp, matrix.sum(1) - tp
    denominator = 2 * tp + fp + fn
    return float(np.mean(np.where(denominator > 0, 2 * tp / np.where(denominator > 0, denominator, 1), 0.0)))


STATS_WIDTHS = {"chrf": 18, "bleu": 10}  # sacrebleu's defaults: 3 x 6 character orders; 2 + 2 x 4 word orders


def stats_width(metric: str) -> int:
    """How many numbers an item's stats of `metric` hold (mean metrics: [score, 1]; not for macro_f1, whose
    width depends on the label count)."""
    return STATS_WIDTHS.get(metric, 2)


def mixture_stats(layout: list[tuple[str, int]], component: int, stats: list[float]) -> list[float]:
    """A mixture item's stats: the header of `layout` ([(metric, width)] per component) and `stats` in the block
    of its `component`."""
    if len(stats) != layout[component][1]:
        raise ValueError(f"component {component} has {len(stats)} stats, its layout says {layout[component][1]}")
    header = [1.0, float(len(layout))] + [float(x) for metric, width in layout for x in (METRIC_CODES.index(metric), width)]
    blocks: list[float] = []
    for i, (_, width) in enumerate(layout):
        blocks += [1.0, *map(float, stats)] if i == component else [0.0] * (width + 1)
    return header + blocks


def _mean_of_components(sums: np.ndarray) -> float:
    n = sums[0]
    components = int(round(sums[1] / n))
    header = np.rint(sums[2:2 + 2 * components] / n).astype(int)
    position, scores = 2 + 2 * components, []
    for code, width in header.reshape(-1, 2):
        block = sums[position:position + 1 + width]
        position += 1 + width
        if block[0] > 0:
            scores.append(aggregate(METRIC_CODES[code], block[1:]))
    return float(np.mean(scores)) if scores else 0.0


# metric name -> function of the column sums of `stats`; metrics not listed are means of per-item scores
AGGREGATORS: dict[str, Callable[[np.ndarray], float]] = {
    "chrf": _sacrebleu_score("chrf"), "bleu": _sacrebleu_score("bleu"), "macro_f1": _macro_f1,
    "mean_score": _mean_of_components,
}


def aggregate(metric: str, sums: np.ndarray | Iterable[float]) -> float:
    """The corpus-level `metric` from the column sums of its items' stats."""
    return AGGREGATORS.get(metric, _mean)(np.asarray(sums, dtype=float))


def item_rows(split: str, who: str, records: Iterable[dict[str, Any]]) -> list[dict[str, Any]]:
    """File rows from a task's `item_records` ({id, score, stats, pred}) of one split and one `who`."""
    return [{"split": split, "who": who, **record} for record in records]


def score_floors(task: Any, train_rows: list[dict[str, Any]], splits: dict[str, list[dict[str, Any]]]
                 ) -> tuple[dict[str, dict[str, float]], list[dict[str, Any]]]:
    """Every floor of `task` (its `floors(train_rows)`) on each split of `splits`, scored by the task's own
    scorer: ({name: {split: primary score}}, the floors' item rows)."""
    scores: dict[str, dict[str, float]] = {}
    rows: list[dict[str, Any]] = []
    for name, floor in task.floors(train_rows).items():
        for split in SPLITS:
            metrics, records = task.scored_items(floor(splits[split]), splits[split], keep_pred=False)
            scores.setdefault(name, {})[split] = metrics[task.primary_metric]
            rows += item_rows(split, floor_who(name), records)
    return scores, rows


def choose_floor(floors: dict[str, dict[str, float]], base_val: float, base_test: float) -> dict[str, Any]:
    """The best floor on validation among the trivial floors and the untuned model ("base"; a tie goes to the
    trivial floor listed first), with its test score: result.json's `floor_name`, `floor_score`,
    `floor_val_score`."""
    candidates = {**floors, BASE_WHO: {"validation": base_val, "test": base_test}}
    name = max(candidates, key=lambda n: (candidates[n]["validation"], -list(candidates).index(n)))
    return {"floor_name": name, "floor_score": candidates[name]["test"],
            "floor_val_score": candidates[name]["validation"]}


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
