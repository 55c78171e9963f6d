"""AdaLoRA at LoRA's budget: the schedule's fractions map onto peft's tinit / tfinal with pruning done at
`schedule.end`; the fair-adalora sweep's AdaLoRA has LoRA r=16's final rank total on the real minilm-l6 shapes
(meta device); a tiny run records where its schedule ended and what its pruning kept."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from hydra import compose as hydra_compose
from hydra import initialize_config_dir

from conftest import REPO, TINY, compose, conf_with, run_inprocess
from harness.adalora import adalora_budget
from harness.config import effective_config
from harness.errors import ConfigError
from harness.estimate.meta_model import build_meta_model
from harness.methods import apply_method, count_parameters, plan_method


@pytest.mark.parametrize(("steps", "tinit", "tfinal"), [(150, 15, 60), (40, 4, 16), (10, 1, 4)])
def test_pruning_is_done_at_sixty_percent_of_the_steps(steps: int, tinit: int, tfinal: int) -> None:
    eff = effective_config(compose(["model=tiny-bert", "method=adalora", "r=4", f"train.max_steps={steps}"]))
    config = plan_method(build_meta_model(eff), eff, "encoder").peft_config
    assert (config.total_step, config.tinit, config.tfinal) == (steps, tinit, tfinal)
    assert config.total_step - config.tfinal == round(0.6 * steps)  # where peft fixes the rank pattern


def test_a_schedule_ending_before_it_starts_is_refused() -> None:
    eff = effective_config(compose(["model=tiny-bert", "method=adalora", "r=4", "train.max_steps=20",
                                    "method.schedule.end=0.05"]))
    with pytest.raises(ConfigError, match="tinit < end"):
        plan_method(build_meta_model(eff), eff, "encoder")


def test_fair_adalora_budgets_on_minilm(tmp_path: Path) -> None:
    """Composed from sweeps/study/fair-adalora.yaml as `make sweep` composes it, on minilm-l6's real shapes."""
    conf = conf_with(REPO / "sweeps" / "study", tmp_path / "conf")
    counts, plans = {}, {}
    with initialize_config_dir(config_dir=str(conf), version_base="1.3"):
        sweep = hydra_compose(config_name="fair-adalora")
        assert int(sweep.sweep.seeds) >= 5 and int(sweep.sweep.lr_search) >= 2
        for variant in sweep.sweep.variants:
            cfg = hydra_compose(config_name="fair-adalora", overrides=[*variant, "train.max_steps=150"])
            eff = effective_config(cfg)
            model = build_meta_model(eff)
            plan = plan_method(model, eff, "encoder")
            modules = dict(model.named_modules())
            shapes = [(modules[n].out_features, modules[n].in_features) for n in plan.target_modules]
            key = (cfg.method.name, int(cfg.r))
            counts[key] = count_parameters(apply_method(model, plan))[1]
            plans[key] = (plan.peft_config, shapes)
    assert set(counts) == {("lora", 16), ("adalora", 14), ("adalora", 16)}
    lora = counts[("lora", 16)]
    assert lora == 664_707  # 6 layers x (4 x 16 x 768 + 2 x 16 x 1920) + the 384 x 3 + 3 head
    head = 384 * 3 + 3
    for target in (14, 16):
        config, shapes = plans[("adalora", target)]
        budget = adalora_budget(shapes, config.init_r, config.target_r)
        assert config.init_r == 24 and config.target_r == target
        assert counts[("adalora", target)] == budget["allocated"] + head == 997_347  # what the optimizer holds
        assert budget["rank_budget"] == target * len(shapes)
        assert budget["final_min"] < budget["final_even"] < budget["final_max"]
        assert config.total_step - config.tfinal == 90 and config.tinit == 15
        # LoRA's count lies inside what the allocation can reach, so equality is checked on the record
        assert budget["final_min"] + head < lora < budget["final_max"] + head
    r16 = adalora_budget(plans[("adalora", 16)][1], 24, 16)
    assert r16["rank_budget"] == 576 and abs(r16["final_even"] + head - lora) / lora < 0.001  # LoRA's rank total


def test_a_run_records_its_schedule_end_and_what_it_kept(tmp_path: Path) -> None:
    result, run_dir = run_inprocess(["model=tiny-bert", "method=adalora", "r=4", "targets=all-linear",
                                     *TINY, "train.max_steps=10", "train.lr=1e-2"], tmp_path)
    assert result["status"] == "ok", result.get("reason")
    record = result["adalora"]
    assert record["schedule_end_step"] == 6 and record["total_step"] == 10 and record["pruned"]
    modules = len(result["target_modules"])
    assert record["ranks_allocated"] == 6 * modules and record["ranks_kept"] == 4 * modules
    ranks = json.loads((run_dir / "adapter" / "adalora_ranks.json").read_text())
    assert sum(ranks.values()) == record["ranks_kept"]
    assert result["params_effective"] < result["params_trainable"]
    # the effective count by hand: kept ranks x (in + out + 1) per module, plus the classifier head
    eff = effective_config(compose(["model=tiny-bert", "method=adalora", "r=4", "targets=all-linear", *TINY]))
    modules = dict(build_meta_model(eff).named_modules())
    by_hand = sum(kept * (modules[name.split(".lora_E")[0]].in_features + modules[name.split(".lora_E")[0]].out_features + 1)
                  for name, kept in ranks.items())
    by_hand += sum(p.numel() for p in modules["classifier"].parameters())
    assert result["params_effective"] == by_hand
    saved = json.loads((run_dir / "result.json").read_text())
    assert saved["params_effective"] == result["params_effective"] and saved["adalora"] == record


def test_other_methods_record_no_adalora_keys(tmp_path: Path) -> None:
    result, _ = run_inprocess(["model=tiny-bert", "method=lora", "r=4", *TINY], tmp_path)
    assert result["status"] == "ok" and "adalora" not in result and "params_effective" not in result
