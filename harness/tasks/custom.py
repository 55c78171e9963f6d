"""`custom`: any input -> output data of your own (task.source=files) or from the hub (task.source=hub).

    python -m harness.run task=custom task.path=pairs.jsonl 'task.fields={input: question, target: answer}'

Each row's prompt is `task.instruction` followed by the input; the answer is scored against the target with
`task.metric`: exact_match or contains (short answers), chrf or bleu (free text).

Floors: `majority`, the most frequent training target given to every row; with chrf or bleu also `copy`, the
input unchanged (the bar for a rewriting task).
"""

from __future__ import annotations

from typing import Any

from harness.errors import ConfigError
from harness.tasks.base import Floor, Task, constant, load_metric, majority

METRIC_MODULES = {"exact_match": "exact_match", "contains": "exact_match", "chrf": "text_similarity", "bleu": "text_similarity"}


class CustomTask(Task):
    name = "custom"
    fields = ("input", "target")
    templates = ("{input}",)

    def __init__(self, cfg, cache):
        if cfg.get("metric") not in METRIC_MODULES:
            raise ConfigError(f"task.metric must be one of {', '.join(METRIC_MODULES)}, got {cfg.get('metric')!r}")
        if (cfg.get("source") or "builtin") == "builtin":
            raise ConfigError("task=custom reads your data: set task.source=files (with task.path) or task.source=hub "
                              "(with task.dataset)")
        super().__init__(cfg, cache)
        self.primary_metric = cfg.metric

    def row_from_record(self, record: dict[str, Any]) -> dict[str, Any]:
        return {"input": str(record["input"]), "target": str(record["target"])}

    def render(self, row: dict[str, Any], template: int = 0) -> str:
        instruction = self.cfg.get("instruction") or ""
        return f"{instruction}\n\n{row['input']}" if instruction else row["input"]

    def target(self, row: dict[str, Any]) -> str:
        return row["target"]

    def describe(self, row: dict[str, Any]) -> str:
        return row["input"]

    def floors(self, train_rows: list[dict[str, Any]]) -> dict[str, Floor]:
        floors = {"majority": constant(majority(r["target"] for r in train_rows))}
        if self.cfg.metric in ("chrf", "bleu"):
            floors["copy"] = lambda rows: [r["input"] for r in rows]
        return floors

    def score(self, outputs: list[str], rows: list[dict[str, Any]], items_for: str | None = None) -> dict[str, Any]:
        metric = load_metric(METRIC_MODULES[self.cfg.metric])
        return metric.compute(predictions=outputs, references=[r["target"] for r in rows], items_for=items_for)
