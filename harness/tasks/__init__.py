"""Task registry: `task=<name>` in the config picks a class here."""

from __future__ import annotations

from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from harness.errors import ConfigError
from harness.tasks.base import Task
from harness.tasks.classify import ClassifyTask
from harness.tasks.custom import CustomTask
from harness.tasks.extract import ExtractTask
from harness.tasks.knowledge import KnowledgeTask
from harness.tasks.mixture import InstructTask, MultitaskTask
from harness.tasks.style import StyleTask

TASKS: dict[str, type[Task]] = {
    cls.name: cls for cls in (ClassifyTask, StyleTask, ExtractTask, KnowledgeTask, InstructTask, MultitaskTask, CustomTask)
}
CONF_TASK_DIR = Path(__file__).resolve().parent.parent.parent / "conf" / "task"
USER_DATA_TASKS = ("custom",)  # nothing to prepare until the user points them at data


def get_task(cfg: DictConfig, cache: Path) -> Task:
    if cfg.name not in TASKS:
        raise ConfigError(f"task '{cfg.name}' has no implementation; known: {', '.join(sorted(TASKS))}")
    return TASKS[cfg.name](cfg, cache)


def prepare_all_tasks(cache: Path) -> None:
    """Prepare and cache the default splits of every task (what `make setup` does)."""
    for name in sorted(TASKS):
        if name in USER_DATA_TASKS:
            continue
        task = get_task(OmegaConf.load(CONF_TASK_DIR / f"{name}.yaml"), cache)
        print(f"task {name}: {task.prepare()} (fingerprint {task.fingerprint()})")
