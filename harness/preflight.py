"""Command-line checks before Hydra starts a run: unknown group options and keys get one line with a
"did you mean", a single run's values are validated, and the runs folder (single runs and `-m` sweeps alike) must
be one a run can be written to, so a typo never leaves a run folder behind and an unusable location never ends in
Hydra's traceback."""

from __future__ import annotations

import functools
import os
import shutil
import sys
import tempfile
from pathlib import Path

from hydra import compose, initialize_config_dir
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.errors import HydraException
from omegaconf import OmegaConf

from harness.assets import CONF_DIR
from harness.exits import error
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
    check_run_locations(argv, overrides)
    if sweeping or any(f in ("-m", "--multirun") for f in flags):
        return  # each run of a sweep is validated (and recorded) on its own
    cfg = compose_checked(overrides)
    validate(cfg)
    check_user_data(cfg)


MIN_FREE_BYTES = 64 << 20  # below this a run cannot write its record and adapter (a LoRA adapter of a 135M model: ~2 MiB)


def _option(argv: list[str], *names: str) -> str | None:
    """The value of Hydra's `--config-dir X` / `--config-dir=X` style flag (its first spelling given)."""
    for i, arg in enumerate(argv):
        for name in names:
            if arg == name and i + 1 < len(argv):
                return argv[i + 1]
            if arg.startswith(name + "="):
                return arg.split("=", 1)[1]
    return None


def run_locations(argv: list[str], overrides: list[str]) -> dict[str, str]:
    """{setting: folder} Hydra will create for this command line: paths.runs (from the command line, else the
    sweep file named by --config-name, else conf/paths), and hydra.run.dir / hydra.sweep.dir when given (the part
    before any interpolation; by default both derive from paths.runs)."""
    runs = None
    sweep_file = _option(argv, "--config-name", "-cn")
    if sweep_file and not any(o.startswith("paths.runs=") for o in overrides):
        folder = Path(_option(argv, "--config-dir", "-cd") or ".")
        path = folder / (sweep_file if sweep_file.endswith(".yaml") else sweep_file + ".yaml")
        try:
            runs = OmegaConf.select(OmegaConf.load(path), "paths.runs", default=None, throw_on_resolution_failure=False)
        except Exception:  # noqa: BLE001 - missing or malformed: Hydra reports the sweep file itself
            runs = None
    if runs is None:
        parsed = OverridesParser.create().parse_overrides([o for o in overrides if o.startswith("paths.")])
        try:
            runs = _compose([o.input_line for o in parsed if not o.is_sweep_override()]).paths.runs
        except HydraException as err:
            raise ConfigError(f"cannot read paths.runs: {str(err).splitlines()[0]}") from None
    found = {"paths.runs": str(runs)}
    for arg in argv:
        key, _, value = arg.partition("=")
        if key in ("hydra.run.dir", "hydra.sweep.dir") and value.split("${", 1)[0].strip():
            found[key] = value.split("${", 1)[0]
    return found


def check_location(path: Path, name: str) -> None:
    """The folder can be created (or exists) and written, and its file system has MIN_FREE_BYTES free: a
    temporary folder is made and removed in the nearest existing ancestor (os.access alone passes for root,
    and under /proc, where nothing can be created)."""
    fix = f"choose a writable folder, e.g. {name}=./runs"
    probe = path.absolute()
    while not probe.exists() and probe != probe.parent:
        probe = probe.parent
    if not probe.is_dir():
        raise ConfigError(f"{name}={path} is not writable: {probe} is not a folder; {fix}")
    try:
        shutil.rmtree(tempfile.mkdtemp(prefix=".harness-probe-", dir=probe))
    except OSError as err:
        why = "no write permission" if isinstance(err, PermissionError) else err.strerror or type(err).__name__
        raise ConfigError(f"{name}={path} is not writable: cannot create a folder in {probe} ({why}); {fix}") from None
    free = shutil.disk_usage(probe).free
    if free < MIN_FREE_BYTES:
        raise ConfigError(f"{name}={path} has only {free >> 20} MiB free (a run needs at least {MIN_FREE_BYTES >> 20} "
                          f"MiB); free some space or choose another folder")


def check_run_locations(argv: list[str], overrides: list[str]) -> None:
    for name, folder in run_locations(argv, overrides).items():
        check_location(Path(os.path.expanduser(folder)), name)


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
