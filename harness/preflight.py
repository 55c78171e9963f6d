"""Command-line checks before Hydra starts a run: unknown group options and keys get one line with a
"did you mean", and a single run's values are validated, so a typo never leaves a run folder behind."""

from __future__ import annotations

import functools
import sys

from hydra import compose, initialize_config_dir
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.errors import HydraException
from omegaconf import OmegaConf

from harness.assets import CONF_DIR
from harness.cli import error
from harness.config import all_keys, config_groups, did_you_mean, group_options, validate
from harness.errors import ConfigError, HarnessError


def _compose(overrides: list[str]):
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        return compose(config_name="config", overrides=overrides)


@functools.cache
def _default_keys() -> tuple[str, ...]:
    """Every key of the composed default config (one compose per process: `check` asks twice)."""
    return tuple(all_keys(OmegaConf.to_container(_compose([]))))


def check_overrides(overrides: list[str]) -> bool:
    """Unknown group options and keys as one line each (with a "did you mean"); True when the overrides sweep.
    The one override check of the harness: `harness.run` calls it before Hydra starts, `harness.estimate`
    through `compose_checked`, so both accept exactly the same overrides (method-specific keys included)."""
    try:
        parsed = OverridesParser.create().parse_overrides(overrides)
    except HydraException as err:
        raise ConfigError(f"cannot parse the overrides: {str(err).splitlines()[0]}") from None
    groups = config_groups()
    known_keys = _default_keys()
    for o in parsed:
        key = o.key_or_group
        if key in groups and not o.is_delete():
            options = group_options(key)
            values = list(o.sweep_string_iterator()) if o.is_sweep_override() else [o.get_value_element_as_str()]
            for value in values:
                if value not in options:
                    raise ConfigError(f"unknown {key} '{value}'{did_you_mean(value, options)}; choose one of: {', '.join(options)}")
        elif o.is_add() or o.is_force_add() or key.startswith("hydra"):
            continue
        elif key not in known_keys and not any(key.startswith(g + ".") for g in groups):
            # train.* knobs first: they are what users mean; method.lr etc. are per-method defaults
            same_leaf = sorted((k for k in known_keys if k.endswith("." + key)), key=lambda k: k.split(".")[0] in groups and k.split(".")[0] != "train")
            hint = f" (did you mean '{same_leaf[0]}'?)" if same_leaf else did_you_mean(key, known_keys)
            raise ConfigError(f"unknown config key '{key}'{hint}; `python -m harness.run --cfg job` lists every key")
    return any(o.is_sweep_override() for o in parsed)


def compose_checked(overrides: list[str]):
    """The run config for these overrides after `check_overrides`; a Hydra error becomes one line."""
    if check_overrides(overrides):
        raise ConfigError("a sweep (a=1,2) is not one configuration; give one value per key")
    try:
        return _compose(overrides)
    except HydraException as err:
        raise ConfigError(str(err).splitlines()[0]) from None


def check(argv: list[str]) -> None:
    flags = [a for a in argv if a.startswith("-")]
    if any(f in ("--help", "-h", "--hydra-help", "--info", "-i", "--version") for f in flags):
        return
    overrides = [a for a in argv if not a.startswith("-") and not a.startswith("hydra.") and "=" in a]
    sweeping = check_overrides(overrides)
    if sweeping or any(f in ("-m", "--multirun") for f in flags):
        return  # each run of a sweep is validated (and recorded) on its own
    cfg = compose_checked(overrides)
    validate(cfg)
    check_user_data(cfg)


def check_user_data(cfg) -> None:
    """A user's data file or hub dataset (task.source=files|hub) is read and split before Hydra starts, so a
    missing, empty, malformed or mistyped file costs one line and leaves no run folder. Built-in data is
    prepared by `make setup` and checked by the tests."""
    if (cfg.task.get("source") or "builtin") == "builtin":
        return
    from harness.assets import cache_dir
    from harness.tasks import get_task

    get_task(cfg.task, cache_dir(cfg.paths.get("cache"))).prepare()


def check_or_exit(argv: list[str]) -> None:
    try:
        check(argv)
    except HarnessError as err:
        sys.exit(error(err))
