"""Weights & Biases: online when credentials exist, offline files otherwise (`wandb sync` uploads them later).

Nothing in the local record depends on W&B: every call here is wrapped so that a W&B failure only costs the
W&B copy. Training curves come from transformers' own W&B callback, which reuses the run started here.
"""

from __future__ import annotations

import logging
import netrc
import os
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

log = logging.getLogger(__name__)


def has_credentials() -> bool:
    """An API key in the environment or in ~/.netrc for the W&B host (what `wandb login` writes)."""
    if os.environ.get("WANDB_API_KEY"):
        return True
    host = urlparse(os.environ.get("WANDB_BASE_URL", "https://api.wandb.ai")).hostname
    try:
        return netrc.netrc().authenticators(host) is not None
    except (OSError, netrc.NetrcParseError):
        return False


def resolve_mode(mode: str) -> str:
    if mode == "auto":
        return "online" if has_credentials() else "offline"
    return mode


class Tracker:
    """One W&B run per harness run, or a no-op when tracking is off or W&B fails."""

    def __init__(self, tracking_cfg: Any, run_dir: Path, run_id: str, config: dict[str, Any],
                 tags: list[str], group: str | None, name: str | None):
        self.run = None
        self.mode = "disabled" if tracking_cfg.backend == "none" else resolve_mode(tracking_cfg.mode)
        if self.mode == "disabled":
            return
        try:
            import wandb

            self.run = wandb.init(
                project=tracking_cfg.project, entity=tracking_cfg.entity, group=group, name=name or run_id,
                tags=tags, config=config, dir=str(run_dir), mode=self.mode, reinit="finish_previous",
                settings=wandb.Settings(silent=True, init_timeout=60, console="off", save_code=False),
            )
        except Exception as err:  # noqa: BLE001 - W&B must never stop a run
            log.warning("W&B init failed (%s); the run continues with its local record only", err)
            self.run = None

    @property
    def callbacks(self) -> list:
        """Trainer's own W&B callback (training curves), guarded so a W&B failure never stops training."""
        return [SafeWandbCallback()] if self.run is not None else []

    def log(self, metrics: dict[str, Any], step: int) -> None:
        """Scalars at a training step (the validation curve), on the same step axis as Trainer's curves."""
        if self.run is None:
            return
        try:
            self.run.log({**metrics, "train/global_step": step})
        except Exception as err:  # noqa: BLE001
            log.warning("W&B log failed: %s", err)

    def log_table(self, key: str, columns: list[str], rows: list[list[Any]]) -> None:
        if self.run is None:
            return
        try:
            import wandb

            self.run.log({key: wandb.Table(columns=columns, data=rows)})
        except Exception as err:  # noqa: BLE001
            log.warning("W&B table upload failed: %s", err)

    def finish(self, result: dict[str, Any]) -> None:
        if self.run is None:
            return
        try:
            self.run.summary.update(result)  # nested dicts (metrics, versions) stay nested
            self.run.finish(exit_code=0 if result.get("status") == "ok" else 1)
        except Exception as err:  # noqa: BLE001
            log.warning("W&B finish failed (%s); the local result.json is complete", err)
        finally:
            self.run = None

    @property
    def run_path(self) -> str | None:
        return None if self.run is None else self.run.dir


def _guarded(name: str):
    def method(self, *args, **kwargs):
        if self.broken:
            return None
        try:
            return getattr(WandbCallback, name)(self, *args, **kwargs)
        except Exception as err:  # noqa: BLE001
            self.broken = True
            log.warning("W&B logging failed (%s); training continues, result.json stays complete", err)
            return None

    return method


try:
    from transformers.integrations import WandbCallback
except ImportError:  # pragma: no cover - wandb is a dependency
    WandbCallback = object


class SafeWandbCallback(WandbCallback):
    """transformers' WandbCallback that disables itself on its first error instead of raising into Trainer."""

    broken = False


for _name in ("setup", "on_train_begin", "on_train_end", "on_log", "on_save", "on_evaluate", "on_predict"):
    setattr(SafeWandbCallback, _name, _guarded(_name))
