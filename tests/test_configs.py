"""Every config file composes, and the run identity normalises axes a method ignores."""

from __future__ import annotations

import pytest

from conftest import compose
from harness.assets import CONF_DIR
from harness.config import config_groups, effective_config, group_options, run_id, validate

GROUP_OPTIONS = [(g, o) for g in config_groups() for o in group_options(g)]


@pytest.mark.parametrize(("group", "option"), GROUP_OPTIONS, ids=[f"{g}={o}" for g, o in GROUP_OPTIONS])
def test_every_config_file_composes(group: str, option: str, tmp_path) -> None:
    cfg = compose([f"{group}={option}", f"paths.runs={tmp_path}"])
    if group in ("method", "model", "task", "targets"):  # their names label runs, so they must match the file
        assert cfg[group].name == option, f"conf/{group}/{option}.yaml must set name: {option}"
    eff = effective_config(cfg)
    assert eff["task"]["name"] == cfg.task.name


def test_every_config_file_opens_with_the_command_that_runs_it() -> None:
    for path in CONF_DIR.rglob("*.yaml"):
        first = path.read_text().splitlines()[0]
        assert first.startswith("#"), f"{path} should open with a comment"


def test_defaults_compose_and_validate(tmp_path) -> None:
    cfg = compose([f"paths.runs={tmp_path}"])
    eff = validate(cfg).effective
    assert (cfg.method.name, cfg.model.name, cfg.task.name, cfg.targets.name) == ("lora", "smollm2-135m", "classify", "qv")
    assert eff["r"] == 16 and eff["alpha"] == 32  # alpha defaults to 2r
    assert eff["train"]["lr"] == cfg.method.lr


def test_full_ft_ignores_rank_and_targets() -> None:
    ids = {run_id(compose(["method=full", f"r={r}", f"targets={t}"])) for r in (4, 16) for t in ("qv", "mlp")}
    assert len(ids) == 1
    eff = effective_config(compose(["method=full", "r=8"]))
    assert eff["r"] is None and eff["alpha"] is None and eff["targets"] is None


def test_lora_runs_differ_by_rank_targets_and_seed() -> None:
    base = ["method=lora"]
    ids = {run_id(compose(base + extra)) for extra in ([], ["r=8"], ["targets=mlp"], ["seed=1"], ["alpha=8"])}
    assert len(ids) == 5


def test_reporting_keys_do_not_change_identity(tmp_path) -> None:
    a = run_id(compose(["tracking=none", "paths.runs=/tmp/a"]))
    b = run_id(compose(["tracking=wandb", f"paths.runs={tmp_path}", "name=x", "group=g"]))
    assert a == b
    assert a.startswith("classify_smollm2-135m_lora_r16_qv_s0_")
