"""Every fine-tuning method on the tiny models: two optimisation steps move the loss and only the parameters the
method trains; trainable counts match peft and the closed forms; a saved adapter reloads to the same outputs
(QLoRA on its quantised base); configs a method cannot run stop before training with one line."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch

from conftest import TINY, compose, run_inprocess
from harness.assets import cache_dir
from harness.config import effective_config, identity, run_id
from harness.errors import ConfigError
from harness.methods import (ConfigNode, apply_method, count_parameters, load_trained, method_callbacks, plan_method,
                             resolve_targets, save_trained)
from harness.models import load_model, load_tokenizer
from harness.quantization import quantization_config
from harness.tasks import get_task
from harness.training import build_trainer, training_arguments

METHODS = ["full", "lora", "rslora", "dora", "qlora", "adalora", "ia3", "prefix", "prompt", "pissa", "loha", "lokr", "vera"]
ENCODER_UNSUPPORTED = {"prefix"}
CASES = [(m, method, []) for m in ("tiny-llama", "tiny-bert") for method in METHODS
         if not (m == "tiny-bert" and method in ENCODER_UNSUPPORTED)]
CASES += [("tiny-llama", method, ["train.precision=fp32"]) for method in ("adalora", "pissa")]
# r=8 on all-linear: every module kind is targeted; a large lr makes two steps visible in bf16 logits.
OVERRIDES = ["r=8", "targets=all-linear", "train.lr=1e-2", "train.max_steps=3", "train.batch_size=4",
             "task.n_train=8", "task.n_eval=8", "tracking=none", "train.warmup_ratio=0"]


class Setup:
    """A model with the method applied, through the same functions the pipeline calls."""

    def __init__(self, model_name: str, method: str, tmp_path: Path, extra: list[str] = ()):
        self.cfg = compose([f"model={model_name}", f"method={method}", *OVERRIDES, *extra, f"paths.runs={tmp_path}"])
        self.eff = effective_config(self.cfg)
        self.cache = cache_dir()
        self.kind = self.cfg.model.kind
        self.task = get_task(self.cfg.task, self.cache)
        self.data = self.task.splits()
        self.tokenizer = load_tokenizer(self.cfg.model, self.cache)
        self.base = self.load_base()
        self.plan = plan_method(self.base, self.eff, self.kind)
        self.model = apply_method(self.base, self.plan)
        self.train_ds = self.task.train_dataset(self.data["train"], self.tokenizer, self.kind, 64)
        self.tmp = tmp_path

    def load_base(self):
        return load_model(self.cfg.model, self.cache, precision=self.eff["train"]["precision"], tokenizer=self.tokenizer,
                          labels=self.task.labels, quantization_config=quantization_config(self.eff))

    def trainer(self, callbacks=()):
        args = training_arguments(self.cfg.train, self.eff["train"]["lr"], self.eff["train"]["precision"], 0,
                                  self.tmp / "checkpoints")
        return build_trainer(self.model, self.tokenizer, self.train_ds, args, self.kind,
                             [*method_callbacks(self.model, self.plan), *callbacks])

    def batch(self) -> dict[str, torch.Tensor]:
        trainer = self.trainer()
        return trainer.data_collator([self.train_ds[i] for i in range(4)])

    @torch.no_grad()
    def loss(self, model, batch) -> float:
        model.eval()
        return float(model(**batch).loss)

    @torch.no_grad()
    def logits(self, model, batch) -> torch.Tensor:
        model.eval()
        inputs = {k: v for k, v in batch.items() if k != "labels"}
        logits = model(**inputs).logits.float()
        # prompt tuning returns logits for its virtual tokens too (causal LMs): compare the input's positions
        return logits[:, -batch["input_ids"].shape[1]:] if logits.dim() == 3 else logits


def closed_form(setup: Setup, method: str) -> int | None:
    """Trainable parameters a method should add, from the targeted modules' shapes (None: no closed form here)."""
    model, eff = setup.base, setup.eff
    mods = dict(model.named_modules())
    shapes = [(mods[n].in_features, mods[n].out_features) for n in (setup.plan.target_modules or [])]
    r = eff["r"]
    head = 0
    if setup.kind == "encoder":
        n_labels, hidden = len(setup.task.labels), setup.base.config.hidden_size
        head = hidden * n_labels + n_labels  # the classifier, trained through modules_to_save
    per_module = {
        "lora": lambda i, o: r * (i + o), "rslora": lambda i, o: r * (i + o), "qlora": lambda i, o: r * (i + o),
        "pissa": lambda i, o: r * (i + o), "dora": lambda i, o: r * (i + o) + o,  # + the magnitude vector
        "loha": lambda i, o: 2 * r * (i + o),  # two Hadamard factors, each a rank-r pair
        "adalora": lambda i, o: math.ceil(1.5 * r) * (i + o + 1),  # P, Q and the singular values at init_r
        "vera": lambda i, o: o + r,  # lambda_b and lambda_d
    }
    c = setup.base.config
    n_virtual = eff["method"]["peft_kwargs"].get("num_virtual_tokens")
    if method in per_module:
        return sum(per_module[method](i, o) for i, o in shapes) + head
    if method == "ia3":
        ff = set(setup.plan.peft_config.feedforward_modules)
        return sum(mods[n].in_features if n in ff else mods[n].out_features for n in setup.plan.target_modules) + head
    if method == "prompt":
        return n_virtual * c.hidden_size + head
    if method == "prefix":
        kv_dim = c.num_key_value_heads * (c.hidden_size // c.num_attention_heads)
        return n_virtual * c.num_hidden_layers * 2 * kv_dim
    if method == "full":
        return sum(p.numel() for p in setup.model.parameters())
    return None  # lokr: the Kronecker factorisation's shapes are peft's choice


@pytest.mark.parametrize(("model_name", "method", "extra"), CASES, ids=[f"{m}-{x}{'-' if e else ''}{'-'.join(e)}" for m, x, e in CASES])
def test_method_trains_only_its_parameters_and_reloads(model_name: str, method: str, extra: list[str], tmp_path: Path) -> None:
    setup = Setup(model_name, method, tmp_path, extra)
    model = setup.model

    # counts: the pipeline's count is peft's, equals what requires grad, and the closed form where there is one
    total, trainable = count_parameters(model)
    assert trainable == sum(p.numel() for p in model.parameters() if p.requires_grad)
    if hasattr(model, "get_nb_trainable_parameters"):
        assert (trainable, total) == model.get_nb_trainable_parameters()
    expected = closed_form(setup, method)
    if expected is not None:
        assert trainable == expected, (trainable, expected)
    assert 0 < trainable <= total and (method == "full") == (trainable == total)

    # two optimisation steps
    batch = setup.batch()
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    loss_before = setup.loss(model, batch)
    setup.trainer().train()
    loss_after = setup.loss(model, batch)
    assert loss_after != loss_before
    params = dict(model.named_parameters())
    frozen_changed = [n for n, p in params.items() if not p.requires_grad and not torch.equal(p, before[n])]
    assert not frozen_changed, frozen_changed[:5]
    trained_same = [n for n, p in params.items() if p.requires_grad and torch.equal(p, before[n])]
    assert not trained_same, trained_same[:5]

    if method == "full":
        return
    # save -> reload on a freshly loaded base (quantised again for QLoRA) gives the same logits and answers
    save_trained(model, setup.plan, tmp_path / "adapter")
    reloaded = load_trained(setup.load_base(), tmp_path / "adapter")
    tuned, again = setup.logits(model, batch), setup.logits(reloaded, batch)
    # Exact, except PiSSA in a bf16 base: it is saved as a plain LoRA on the original base, and the base that
    # trained was the bf16-rounded residual; float32 (the fp32 case) is exact for it too.
    inexact = method == "pissa" and setup.eff["train"]["precision"] == "bf16"
    atol = 2e-2 if inexact else 1e-5
    assert torch.allclose(tuned, again, atol=atol, rtol=0), (tuned - again).abs().max()
    fresh = setup.logits(setup.load_base(), batch)
    assert not torch.allclose(tuned, fresh, atol=1e-3), "the adapter should change the model"
    test = setup.data["test"]
    outputs = [setup.task.predict(m, setup.tokenizer, test, setup.kind, 8, 64) for m in (model, reloaded)]
    assert outputs[0] == outputs[1]


def test_adalora_allocates_after_each_optimizer_step_while_gradients_exist(tmp_path: Path) -> None:
    setup = Setup("tiny-llama", "adalora", tmp_path, ["train.max_steps=5"])
    inner = setup.model.base_model
    calls: list[tuple[int, bool]] = []
    original = inner.update_and_allocate

    def spy(step: int):
        grads = [p.grad for n, p in setup.model.named_parameters() if "lora_E" in n]
        calls.append((step, all(g is not None for g in grads)))
        return original(step)

    inner.update_and_allocate = spy
    setup.trainer().train()
    assert calls == [(s, True) for s in range(5)]
    assert setup.model.peft_config["default"].total_step == 5
    pattern = setup.model.peft_config["default"].rank_pattern
    assert pattern, "the budget should have been allocated"
    # masked singular values are zero: the budget fell below the initial rank somewhere
    kept = sum(sum(v) for v in pattern.values())
    assert kept < sum(len(v) for v in pattern.values())
    # saved at the initial rank (pruned values zero), kept ranks beside it; the reload gives the same logits
    save_trained(setup.model, setup.plan, tmp_path / "adapter")
    ranks = json.loads((tmp_path / "adapter" / "adalora_ranks.json").read_text())
    assert sum(ranks.values()) == kept and len(ranks) == len(pattern)
    assert setup.model.peft_config["default"].rank_pattern is pattern  # the live model keeps its pattern
    batch = setup.batch()
    reloaded = load_trained(setup.load_base(), tmp_path / "adapter")
    assert torch.equal(setup.logits(setup.model, batch), setup.logits(reloaded, batch))


def test_qlora_trains_a_quantised_base_that_keeps_gradients_after_eval(tmp_path: Path) -> None:
    import bitsandbytes as bnb

    setup = Setup("tiny-llama", "qlora", tmp_path)
    quantised = [m for m in setup.model.modules() if isinstance(m, bnb.nn.Linear4bit)]
    assert len(quantised) == 14  # 2 layers x 7 linear modules; lm_head stays unquantised
    assert all(m.weight.dtype == torch.uint8 and m.weight.quant_type == "nf4" for m in quantised)
    layer = quantised[0].base_layer if hasattr(quantised[0], "base_layer") else quantised[0]
    # an eval pass (the base score) must not switch the layer to bitsandbytes' inference-only CPU kernel
    x = torch.randn(2, 64, dtype=torch.bfloat16)
    layer.eval()
    with torch.no_grad():
        layer(x)
    layer.train()
    x.requires_grad_(True)
    layer(x).float().sum().backward()
    assert x.grad is not None and x.grad.abs().sum() > 0


def test_qlora_result_records_the_quantisation(runs: Path) -> None:
    result, run_dir = run_inprocess(["model=tiny-llama", "method=qlora", *TINY], runs)
    q = result["quantization"]
    assert result["status"] == "ok" and result["precision"] == "bf16"
    assert q["backend"].startswith("bitsandbytes") and q["quant_type"] == "nf4" and q["double_quant"] is True
    assert q["compute_dtype"] == "bfloat16" and q["bits"] == 4
    assert q["quantized_linear"] == 14 and q["unquantized_linear"] == ["lm_head"]
    # below bf16 for every weight: the 4-bit linear layers take about a quarter of their bf16 bytes
    assert 0 < result["weight_footprint_bytes"] < result["params_total"] * 2
    # LoRA r=16 on q (64 -> 64) and v (64 -> 32) in 2 layers: the closed form, as for an unquantised base
    assert result["params_trainable"] == 2 * 16 * (64 + 64) + 2 * 16 * (64 + 32)


@pytest.mark.parametrize("method", ["adalora", "pissa"])  # the two with their own pipeline steps
def test_pipeline_records_peft_count(method: str, runs: Path) -> None:
    result, run_dir = run_inprocess(["model=tiny-llama", f"method={method}", *TINY, "r=8"], runs)
    assert result["status"] == "ok" and (run_dir / "adapter" / "adapter_config.json").exists()
    setup = Setup("tiny-llama", method, runs, ["r=8", "targets=qv"])
    assert result["params_trainable"] == setup.model.get_nb_trainable_parameters()[0]


@pytest.mark.parametrize(("model_name", "expected"), [("tiny-llama", "mlp.down_proj"), ("tiny-bert", ".output.dense")])
def test_ia3_scales_the_feedforward_activation(model_name: str, expected: str, tmp_path: Path) -> None:
    cfg = compose([f"model={model_name}", "method=ia3", "targets=all-linear", f"paths.runs={tmp_path}"])
    eff = effective_config(cfg)
    task = get_task(cfg.task, cache_dir())
    model = load_model(cfg.model, cache_dir(), precision="bf16", tokenizer=load_tokenizer(cfg.model, cache_dir()),
                       labels=task.labels)
    plan = plan_method(model, eff, cfg.model.kind)
    ff = sorted(plan.peft_config.feedforward_modules)
    assert len(ff) == 2 and all(n.endswith(expected) and "attention" not in n for n in ff), ff
    assert set(ff) < set(plan.target_modules)


# ---- configs a method cannot run: one line, before any training ----

def test_prefix_on_an_encoder_is_a_config_error(runs: Path) -> None:
    with pytest.raises(ConfigError, match="method=prefix does not support encoder") as err:
        run_inprocess(["model=tiny-bert", "method=prefix", *TINY], runs)
    assert "\n" not in str(err.value)
    assert not list(runs.rglob("result.json"))  # stopped before the run was even recorded


@pytest.mark.parametrize(("method", "r", "what", "limit"), [("lora", 64, "r=64", 32),
                                                            ("adalora", 24, "r=24 \\(initial rank 36\\)", 21),
                                                            ("vera", 48, "r=48", 32)])
def test_rank_above_a_target_dimension_is_a_config_error(method: str, r: int, what: str, limit: int, runs: Path) -> None:
    # tiny-llama's k_proj / v_proj map 64 -> 32 (2 key-value heads of 16)
    with pytest.raises(ConfigError, match=f"{what} exceeds the smaller dimension \\(32\\)") as err:
        run_inprocess(["model=tiny-llama", f"method={method}", f"r={r}", "targets=attn", *TINY], runs)
    assert "\n" not in str(err.value) and str(err.value).endswith(f"choose r <= {limit}")
    assert not list(runs.rglob("result.json"))


def test_targets_matching_nothing_is_a_config_error(tmp_path: Path) -> None:
    setup_cfg = compose(["model=tiny-llama", f"paths.runs={tmp_path}"])
    tokenizer = load_tokenizer(setup_cfg.model, cache_dir())
    model = load_model(setup_cfg.model, cache_dir(), precision="bf16", tokenizer=tokenizer)
    rule = ConfigNode({"name": "nowhere", "llama": {"include": ["no_such_proj"]}})
    with pytest.raises(ConfigError, match="targets=nowhere matches no module of llama"):
        resolve_targets(model, rule)


def test_paged_optimizer_without_cuda_is_a_config_error(runs: Path) -> None:
    if torch.cuda.is_available():
        pytest.skip("paged optimizers run on CUDA")
    with pytest.raises(ConfigError, match="needs CUDA"):
        run_inprocess(["model=tiny-llama", "method=qlora", "train.optim=paged_adamw_8bit", *TINY], runs)


# ---- axes that do not apply are normalised, so equivalent runs share a run_id ----

@pytest.mark.parametrize(("method", "varied", "same"), [
    ("ia3", ["r=4", "r=16", "alpha=7"], True),
    ("prompt", ["r=4 targets=qv", "r=16 targets=mlp"], True),
    ("prefix", ["targets=qv", "targets=all-linear alpha=3"], True),
    ("vera", ["alpha=4", "alpha=64"], True),
    ("vera", ["r=4", "r=16"], False),
    ("adalora", ["r=4", "r=8"], False),
    ("dora", ["targets=qv", "targets=mlp"], False),
])
def test_ignored_axes_share_a_run_id(method: str, varied: list[str], same: bool) -> None:
    ids = {run_id(compose([f"method={method}", *v.split()])) for v in varied}
    assert (len(ids) == 1) == same, ids
    ident = identity(compose([f"method={method}", *varied[0].split()]))
    if method in ("ia3", "prompt", "prefix"):
        assert ident["r"] is None and ident["alpha"] is None
    if method in ("prompt", "prefix"):
        assert ident["targets"] is None
    if method == "vera":
        assert ident["alpha"] is None and ident["r"] is not None


def test_different_methods_with_the_same_peft_type_get_different_ids() -> None:
    ids = {run_id(compose([f"method={m}"])) for m in ("lora", "rslora", "dora", "qlora", "pissa")}
    assert len(ids) == 5


@pytest.mark.parametrize(("model_name", "expected"), [
    ("tiny-llama", {"self_attn.k_proj", "self_attn.v_proj", "mlp.down_proj"}),
    ("tiny-bert", {"attention.self.key", "attention.self.value", "output.dense"}),
])
def test_ia3_targets_are_keys_values_and_the_mlp_output(model_name: str, expected: set[str], runs: Path) -> None:
    result, _ = run_inprocess([f"model={model_name}", "method=ia3", "targets=ia3", *TINY], runs)
    assert result["status"] == "ok"
    layer_names = {n.split(".layers.")[-1].split(".layer.")[-1].split(".", 1)[1] for n in result["target_modules"]}
    assert layer_names == expected
    adapter = json.loads((runs / result["run_id"] / "adapter" / "adapter_config.json").read_text())
    feedforward = set(adapter["feedforward_modules"])  # scaled at its input: the (IA)^3 paper's l_ff
    assert feedforward and all(n.endswith(("down_proj", "output.dense")) for n in feedforward)
    assert not any("attention.output" in n for n in feedforward)
