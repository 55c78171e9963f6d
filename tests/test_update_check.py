"""Training really happened: every tensor the method's structure and the schedule say must have moved did (or the
run ends `failed`); runs too short to judge end `ok` with the verdict `too_short`."""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

import pytest

from conftest import TINY, run_inprocess
from harness.assets import CONF_DIR
from harness.update_check import METHODS, UpdateCheck, group_of


class TwoLayers(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.layers = nn.ModuleList([nn.Linear(4, 4), nn.Linear(4, 4)])
        self.unused = nn.Linear(4, 4)  # trainable, never in the forward pass: the planted frozen tensor

    def forward(self, x):
        return self.layers[1](self.layers[0](x))


def test_a_tensor_outside_the_graph_is_named_and_the_rest_is_measured() -> None:
    torch.manual_seed(0)
    model = TwoLayers()
    check = UpdateCheck(model)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    for _ in range(3):
        opt.zero_grad()
        model(torch.randn(8, 4)).pow(2).mean().backward()
        check.on_pre_optimizer_step(None, None, None)
        opt.step()
    record, stuck = check.report()
    assert stuck == ["unused.weight", "unused.bias"]
    assert record["not_trained"] == stuck and record["steps"] == 3 and record["tensors"] == 6
    layers = record["groups"]["layers.*.weight"]
    assert layers["tensors"] == 2 and layers["moved"] == 2 and layers["with_grad"] == 2
    assert layers["grad_norm"] > 0 and 0 < layers["rel_change"] < 1
    assert record["groups"]["unused.weight"]["moved"] == 0 and record["groups"]["unused.weight"]["grad_norm"] == 0


def test_a_gradient_that_never_moves_the_weight_is_caught() -> None:
    model = nn.Linear(3, 3)
    check = UpdateCheck(model)
    model(torch.randn(2, 3)).sum().backward()
    check.on_pre_optimizer_step(None, None, None)  # a gradient arrived, but no optimizer step applied it
    _, stuck = check.report()
    assert set(stuck) == {"weight", "bias"}


def test_group_names_fold_layer_numbers() -> None:
    assert group_of("base_model.model.model.layers.11.self_attn.q_proj.lora_A.default.weight") == \
        "base_model.model.model.layers.*.self_attn.q_proj.lora_A.default.weight"
    assert group_of("classifier.weight") == "classifier.weight"


def test_a_run_with_a_planted_frozen_tensor_fails_and_names_it(runs: Path, monkeypatch) -> None:
    import harness.phases.prepare as pipeline

    original = pipeline.apply_method

    def with_planted(model, plan):
        model = original(model, plan)
        model.register_parameter("planted_frozen", nn.Parameter(torch.zeros(3)))  # in the optimizer, not the graph
        return model

    monkeypatch.setattr(pipeline, "apply_method", with_planted)
    result, run_dir = run_inprocess(["model=tiny-llama", *TINY, "method=lora", "r=2", "targets=qv"], runs)
    assert result["status"] == "failed" and "planted_frozen" in result["reason"]
    assert result["update_check"]["not_trained"] == ["planted_frozen"]
    assert result["update_check"]["verdict"] == "failed"
    assert not (run_dir / "adapter").exists()  # nothing saved that looks trained


def test_an_ordinary_run_records_every_group_moving(runs: Path) -> None:
    result, _ = run_inprocess(["model=tiny-llama", *TINY, "method=lora", "r=2", "targets=qv"], runs)
    assert result["status"] == "ok" and result["update_check"]["not_trained"] == []
    groups = result["update_check"]["groups"]
    b = next(v for k, v in groups.items() if "lora_B" in k)
    a = next(v for k, v in groups.items() if "lora_A" in k)
    assert b["rel_change"] is None and b["change_norm"] > 0  # B starts at zero: a change, no ratio
    assert a["rel_change"] > 0 and a["moved"] == a["tensors"] == 2


# ---- the method table and short runs ------------------------------------------------------------------------

def test_every_method_file_has_an_entry_in_the_table() -> None:
    files = {p.stem for p in (CONF_DIR / "method").glob("*.yaml")}
    assert files - set(METHODS) == set(), f"add these to harness/update_check.py METHODS: {files - set(METHODS)}"
    for name, structure in METHODS.items():  # a dependency names a tensor of the method itself
        for tensor, factors in structure.after.items():
            assert tensor in structure.tensors and set(factors) <= set(structure.tensors), name


# The fast subset: LoRA at every length (the B = 0 order) and LoKr at 2 steps (a zero factor of another name);
# the other 35 method x length runs are marked slow (about 10 s each on the tiny model).
FAST = {("lora", 1), ("lora", 2), ("lora", 3), ("lokr", 2)}
SHORT_RUNS = [pytest.param(m, n, marks=() if (m, n) in FAST else pytest.mark.slow, id=f"{m}-{n}step")
              for m in sorted(METHODS) for n in (1, 2, 3)]


@pytest.mark.parametrize("method,steps", SHORT_RUNS)
def test_short_runs_of_every_method_end_ok(method: str, steps: int, runs: Path) -> None:
    """1 step (the warm-up's rate 0): nothing is due; 2 steps: only the tensors waiting for a zero factor may
    still be unmoved; 3 steps: everything moved, including each adapted layer's effective update."""
    overrides = ["model=tiny-llama", *TINY, f"method={method}", "r=2", f"train.max_steps={steps}"]
    result, _ = run_inprocess(overrides, runs)
    check = result["update_check"]
    assert result["status"] == "ok", result["reason"]
    assert check["not_trained"] == [] and check["method_structure"] == method
    if steps == 1:
        assert check["verdict"] == "too_short" and check["counted_steps"] == 0
    elif steps == 2:
        waiting = {part for name in check["not_due"] for part in name.split(".")}
        assert check["verdict"] in ("ok", "too_short") and waiting <= set(METHODS[method].after) | {
            "default", "weight", "base_model", "model", "layers", "self_attn", "mlp", *map(str, range(9)),
            "q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"}, check["not_due"]
    else:
        assert check["verdict"] == "ok" and check["not_due"] == []
        updates = check["effective_updates"]
        assert updates["changed"] == updates["layers"]


# ---- frozen adapters still fail -----------------------------------------------------------------------------

def test_a_frozen_lora_A_fails_at_any_length(runs: Path, monkeypatch) -> None:
    import harness.phases.prepare as pipeline

    original = pipeline.apply_method

    def freeze_a(model, plan):
        model = original(model, plan)
        for name, param in model.named_parameters():
            if "lora_A" in name:
                param.requires_grad_(False)
        return model

    monkeypatch.setattr(pipeline, "apply_method", freeze_a)
    result, run_dir = run_inprocess(["model=tiny-llama", *TINY, "method=lora", "r=2", "train.max_steps=1"], runs)
    assert result["status"] == "failed" and result["update_check"]["verdict"] == "failed"
    assert "lora_A.default.weight (frozen: requires_grad is off)" in result["reason"]
    assert not (run_dir / "adapter").exists()


def test_a_rate_of_zero_at_every_step_fails(runs: Path, monkeypatch) -> None:
    """Not a short run: past the warm-up the schedule promised a positive rate, so B was due and never moved."""
    import torch

    import harness.phases.tuning as pipeline

    original = pipeline.build_trainer

    def zero_rate(*args, **kwargs):
        trainer = original(*args, **kwargs)

        def create_scheduler(num_training_steps, optimizer=None):
            trainer.lr_scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer or trainer.optimizer, lambda step: 0.0)
            return trainer.lr_scheduler

        trainer.create_scheduler = create_scheduler
        return trainer

    monkeypatch.setattr(pipeline, "build_trainer", zero_rate)
    result, _ = run_inprocess(["model=tiny-llama", *TINY, "method=lora", "r=2", "train.max_steps=3"], runs)
    assert result["status"] == "failed" and result["update_check"]["verdict"] == "failed"
    stuck = result["update_check"]["not_trained"]
    assert any("lora_B" in n for n in stuck) and any(n.endswith("(effective update)") for n in stuck)
    assert not any("lora_A" in n for n in stuck)  # A was never due: B never moved


def test_a_factor_waits_for_its_zero_partner() -> None:
    """Without a Trainer (every step counts): one step moves B only, so A is not yet due; a second step is."""

    class LoraLike(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.layer = nn.Module()
            self.layer.lora_A = nn.Linear(4, 2, bias=False)
            self.layer.lora_B = nn.Linear(2, 4, bias=False)
            nn.init.zeros_(self.layer.lora_B.weight)

        def forward(self, x):
            return self.layer.lora_B(self.layer.lora_A(x))

    torch.manual_seed(0)
    model = LoraLike()
    check = UpdateCheck(model, "lora")
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    for steps in (1, 2):
        opt.zero_grad()
        model(torch.randn(8, 4)).sum().backward()
        check.on_pre_optimizer_step(None, None, None)
        opt.step()
        record, stuck = check.report()
        assert stuck == [] and record["verdict"] == ("too_short" if steps == 1 else "ok")
        assert record["not_due"] == (["layer.lora_A.weight"] if steps == 1 else [])


def test_an_adalora_module_pruned_to_rank_zero_is_not_required_to_move() -> None:
    """AdaLoRA's budget may keep no rank of a module: its E is masked back to zero, which is training, not a fault."""
    from types import SimpleNamespace

    class Pruned(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.kept, self.pruned = nn.Module(), nn.Module()
            for module in (self.kept, self.pruned):
                module.lora_E = nn.ParameterDict({"default": nn.Parameter(torch.zeros(2, 1))})
            # peft names the pattern under the wrapped model, without the wrapper's prefix
            self.peft_config = {"default": SimpleNamespace(rank_pattern={"kept.lora_E.default": [True, False],
                                                                         "pruned.lora_E.default": [False, False]})}

        def forward(self, x):
            return (x @ self.kept.lora_E["default"]).sum() + 0 * self.pruned.lora_E["default"].sum()

    model = Pruned()
    check = UpdateCheck(model, "adalora")
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    model(torch.randn(3, 2)).backward()
    check.on_pre_optimizer_step(None, None, None)
    opt.step()
    record, stuck = check.report()
    assert stuck == [] and record["effective_updates"]["pruned"] == 1
    model.peft_config["default"].rank_pattern["pruned.lora_E.default"] = [True, False]  # now it should have moved
    assert check.report()[1] == ["pruned.lora_E.default"]
