"""The run config the estimator works from: the overrides are harness.run's (Hydra over conf/), checked by the
same path (harness/preflight.py), then reduced to the effective config with the value checks that need no model,
so the estimator accepts exactly what a run accepts.
"""

from __future__ import annotations

from typing import Any

from omegaconf import DictConfig, OmegaConf

from harness.errors import ConfigError


def compose_config(overrides: list[str]) -> DictConfig:
    """The run config harness.run would compose for these overrides, through the same override check
    (harness/preflight.py), so the estimator accepts exactly what a run accepts."""
    from harness.config import with_single_budget
    from harness.preflight import compose_checked

    return compose_checked(with_single_budget(list(overrides)))


def effective(cfg: DictConfig) -> dict[str, Any]:
    """harness.config's effective config (ignored axes nulled, precision resolved), with the value checks that
    need no model or network."""
    from harness.config import positive_int, check_budget, effective_config
    from harness.training_budget import planned_steps

    if cfg.method.get("has_rank", False):
        positive_int(cfg.r, "r", "e.g. r=16")
    for key in ("batch_size", "grad_accum", "max_seq_len"):
        positive_int(cfg.train[key], f"train.{key}", f"e.g. train.{key}=8")
    check_budget(cfg.train)
    if cfg.model.source == "hf":  # config.json alone: the estimate needs no weights
        from harness.hf_model import check_model

        check_model(cfg.model.get("path"), need_weights=False, need_kind=OmegaConf.is_interpolation(cfg.model, "kind"))
    eff = effective_config(cfg)
    # several GPUs: the estimate is one GPU's share (a run's identity carries the launched world size instead)
    gpus = cfg.dist.gpus
    if gpus is None and cfg.dist.strategy not in ("none", "ddp"):
        raise ConfigError(f"dist={cfg.dist.strategy}: say over how many GPUs it shards, e.g. dist.gpus=8")
    positive_int(gpus or 1, "dist.gpus", "e.g. dist.gpus=8")
    eff["dist"] = {"strategy": str(cfg.dist.strategy), "gpus": int(gpus or 1)}
    # an epoch budget counts steps over task.n_train rows (the task's pool may hold fewer)
    eff["train"]["max_steps"] = planned_steps(cfg.train, int(cfg.task.n_train))
    return eff


def method_names() -> list[str]:
    from harness.config import group_options

    return group_options("method")
