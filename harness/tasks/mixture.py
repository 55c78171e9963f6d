"""Tasks made of other tasks: `multitask` (their union, each in its own prompt) and `instruct` (the same tasks
phrased as natural-language instructions in several templates, some of which only evaluation uses).

A mixture row is `{"task", "template", "row"}` with the component's row stored as a JSON string. Each split
interleaves the components' own splits round-robin, so any prefix (`n_train`, `n_eval`) is balanced across
tasks, and a component's test rows are exactly its single-task test rows (no mixture trains on another task's
test data). Components are read from `conf/task/<name>.yaml`, overridden by `task.components.<name>`. The score
is the mean of the components' primary scores; every component metric is reported as `<task>/<metric>`.

Per-item records: an item's score is its component's item score; its stats are `harness.items.mixture_stats`
(a header naming each component's metric, then the item's stats in its component's block), so the sums give
the mean of the components' corpus scores. Floor: `per-task`, each row answered by its component's first floor
(classify, extract, knowledge, custom: the majority answer; style: the copied verse).
"""

from __future__ import annotations

import json
import random
import statistics
from typing import Any, ClassVar

import datasets
import torch
from omegaconf import DictConfig, OmegaConf

from harness.assets import CONF_TASK_DIR
from harness.errors import ConfigError
from harness.items import mixture_stats, stats_width
from harness.tasks.base import SPLITS, Floor, Task
from harness.tasks.classify import ClassifyTask
from harness.tasks.custom import CustomTask
from harness.tasks.extract import ExtractTask
from harness.tasks.knowledge import KnowledgeTask
from harness.tasks.style import StyleTask

# what a mixture can be made of (the registry, harness/tasks/__init__.py, adds the mixtures themselves)
SINGLE_TASKS: dict[str, type[Task]] = {cls.name: cls for cls in (ClassifyTask, StyleTask, ExtractTask, KnowledgeTask, CustomTask)}


def interleave(streams: list[list[dict[str, Any]]]) -> list[dict[str, Any]]:
    """Round-robin over the streams until all are used up."""
    out = []
    for i in range(max((len(s) for s in streams), default=0)):
        out += [s[i] for s in streams if i < len(s)]
    return out


class MixtureTask(Task):
    primary_metric = "mean_score"
    train_templates: ClassVar[tuple[int, ...]]
    eval_templates: ClassVar[tuple[int, ...]]

    def __init__(self, cfg: DictConfig, cache):
        super().__init__(cfg, cache)
        self.components: dict[str, Task] = {}
        for name, overrides in (cfg.get("components") or {}).items():
            if name not in SINGLE_TASKS or not (CONF_TASK_DIR / f"{name}.yaml").exists():
                raise ConfigError(f"task.components names '{name}', which is not a single task; "
                                  f"choose among: {', '.join(sorted(SINGLE_TASKS))}")
            merged = OmegaConf.merge(OmegaConf.load(CONF_TASK_DIR / f"{name}.yaml"), overrides or {})
            self.components[name] = SINGLE_TASKS[name](merged, cache)
        if not self.components:
            raise ConfigError(f"task '{self.name}' needs at least one component in task.components")
        for name, task in self.components.items():
            needed = max(self.train_templates + self.eval_templates)
            if len(task.templates) <= needed:
                raise ConfigError(f"task '{name}' has {len(task.templates)} templates; '{self.name}' needs {needed + 1}")

    def prep_params(self) -> dict[str, Any]:
        return super().prep_params() | {
            "components": {n: t.prep_params() for n, t in self.components.items()},
            "train_templates": list(self.train_templates), "eval_templates": list(self.eval_templates),
        }

    def build_pools(self) -> dict[str, list[dict[str, Any]]]:
        rng = random.Random(self.cfg.data_seed)
        pools = {}
        for split in SPLITS:
            templates = self.train_templates if split == "train" else self.eval_templates
            pools[split] = interleave([
                [{"task": name, "template": rng.choice(templates), "row": json.dumps(row, sort_keys=True, ensure_ascii=False)}
                 for row in task.read_split(split)]
                for name, task in self.components.items()
            ])
        return pools

    def _unpack(self, row: dict[str, Any]) -> tuple[Task, dict[str, Any]]:
        return self.components[row["task"]], json.loads(row["row"])

    def messages(self, row: dict[str, Any]) -> list[dict[str, str]]:
        task, sub = self._unpack(row)
        return [{"role": "user", "content": task.render(sub, row["template"])}]

    def target(self, row: dict[str, Any]) -> str:
        task, sub = self._unpack(row)
        return task.target(sub)

    def describe(self, row: dict[str, Any]) -> str:
        task, sub = self._unpack(row)
        return f"[{row['task']}] {task.describe(sub)}"

    @torch.no_grad()
    def predict(self, model, tokenizer, split: datasets.Dataset, kind: str, batch_size: int, max_len: int,
                by_length: bool = True, share_prefix: bool = True) -> list[str]:
        """Greedy answers, generated per component so each keeps its own `max_new_tokens` budget."""
        if kind != "causal_lm":
            raise ConfigError(f"task '{self.name}' needs a causal LM (generation); model kind is {kind}")
        model.eval()
        rows = list(split)
        outputs = [""] * len(rows)
        device = next(model.parameters()).device
        for name, task in self.components.items():
            index = [i for i, r in enumerate(rows) if r["task"] == name]
            answers = self.answers(model, tokenizer, [rows[i] for i in index], device, batch_size, max_len,
                                   task.cfg.max_new_tokens, by_length=by_length, share_prefix=share_prefix)
            for i, answer in zip(index, answers):
                outputs[i] = answer
        return outputs

    def _by_component(self, rows: list[dict[str, Any]]) -> dict[str, tuple[list[int], list[dict[str, Any]]]]:
        """Per component: the positions of its rows and the rows themselves, unpacked."""
        return {name: ([i for i, r in enumerate(rows) if r["task"] == name],
                       [json.loads(r["row"]) for r in rows if r["task"] == name]) for name in self.components}

    def item_scores(self, outputs: list[str], rows: list[dict[str, Any]]) -> tuple[list[float], list[list[float]]]:
        layout = [(t.primary_metric, stats_width(t.primary_metric)) for t in self.components.values()]
        scores: list[float] = [0.0] * len(rows)
        stats: list[list[float]] = [[] for _ in rows]
        for c, (name, (index, subrows)) in enumerate(self._by_component(rows).items()):
            if not index:
                continue
            sub_scores, sub_stats = self.components[name].item_scores([outputs[i] for i in index], subrows)
            for i, score, stat in zip(index, sub_scores, sub_stats):
                scores[i], stats[i] = score, mixture_stats(layout, c, stat)
        return scores, stats

    def floors(self, train_rows: list[dict[str, Any]]) -> dict[str, Floor]:
        chosen = {name: next(iter(task.floors(subrows).values()), None)
                  for (name, (_, subrows)), task in zip(self._by_component(train_rows).items(), self.components.values())}

        def per_task(rows: list[dict[str, Any]]) -> list[str]:
            answers = [""] * len(rows)  # a component without a floor answers nothing
            for name, (index, subrows) in self._by_component(rows).items():
                if chosen[name] is not None and index:
                    for i, answer in zip(index, chosen[name](subrows)):
                        answers[i] = answer
            return answers

        return {"per-task": per_task}

    def score(self, outputs: list[str], rows: list[dict[str, Any]], items_for: str | None = None) -> dict[str, Any]:
        result: dict[str, Any] = {}
        primaries = []
        for name, task in self.components.items():
            picked = [(o, json.loads(r["row"])) for o, r in zip(outputs, rows) if r["task"] == name]
            if not picked:
                continue
            metrics = task.score([o for o, _ in picked], [s for _, s in picked])
            result |= {f"{name}/{k}": v for k, v in metrics.items()}
            result[f"{name}/n"] = len(picked)
            primaries.append(metrics[task.primary_metric])
        result["mean_score"] = statistics.fmean(primaries) if primaries else 0.0
        if items_for == self.primary_metric:
            result["item_scores"], result["item_stats"] = self.item_scores(outputs, rows)
        return result


class MultitaskTask(MixtureTask):
    name = "multitask"
    train_templates = (0,)
    eval_templates = (0,)


class InstructTask(MixtureTask):
    name = "instruct"
    train_templates = (0, 1, 2)
    eval_templates = (3, 4)  # phrasings never seen in training
