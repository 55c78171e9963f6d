"""Task registry: `task=<name>` in the config picks a class here."""

from __future__ import annotations

from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from harness.assets import CONF_TASK_DIR
from harness.errors import ConfigError
from harness.tasks.base import Task
from harness.tasks.memorize import MemorizeTask
from harness.tasks.mixture import SINGLE_TASKS, InstructTask, MultitaskTask

TASKS: dict[str, type[Task]] = SINGLE_TASKS | {cls.name: cls for cls in (InstructTask, MultitaskTask, MemorizeTask)}
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
