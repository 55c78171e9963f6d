"""Training really happened: every trainable tensor got a gradient and moved, or the run ends `failed`."""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from conftest import TINY, run_inprocess
from harness.update_check import UpdateCheck, group_of


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
    import harness.pipeline as pipeline

    original = pipeline.apply_method

    def with_planted(model, plan):
        model = original(model, plan)
        model.register_parameter("planted_frozen", nn.Parameter(torch.zeros(3)))  # in the optimizer, not the graph
        return model

    monkeypatch.setattr(pipeline, "apply_method", with_planted)
    result, run_dir = run_inprocess(["model=tiny-llama", *TINY, "method=lora", "r=2", "targets=qv"], runs)
    assert result["status"] == "failed" and "planted_frozen" in result["reason"]
    assert result["update_check"]["not_trained"] == ["planted_frozen"]
    assert not (run_dir / "adapter").exists()  # nothing saved that looks trained


def test_an_ordinary_run_records_every_group_moving(runs: Path) -> None:
    result, _ = run_inprocess(["model=tiny-llama", *TINY, "method=lora", "r=2", "targets=qv"], runs)
    assert result["status"] == "ok" and result["update_check"]["not_trained"] == []
    groups = result["update_check"]["groups"]
    b = next(v for k, v in groups.items() if "lora_B" in k)
    a = next(v for k, v in groups.items() if "lora_A" in k)
    assert b["rel_change"] is None and b["change_norm"] > 0  # B starts at zero: a change, no ratio
    assert a["rel_change"] > 0 and a["moved"] == a["tensors"] == 2
