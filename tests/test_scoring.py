"""Scoring by generation: prompts batched by length give the same answers as prompt-order batching (tiny model
and, slow, the bundled one), in the rows' order; decoding uses the KV cache and stops once every sequence of a
batch has reached EOS."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from benchmarks.eval_bench import scoring_setup  # model, tokenizer, task and its test split, as the benchmark loads them
from conftest import conf_with


@pytest.mark.parametrize("task", ["extract", "style", "multitask"])
def test_length_batching_keeps_answers_and_their_order(task: str) -> None:
    model, tokenizer, t, test = scoring_setup("tiny-llama", task, 12, "fp32")
    lengths = [len(t.prompt_ids(tokenizer, r)) for r in test]
    assert len(set(lengths)) > 1  # the case where the order of batches matters
    by_length = t.predict(model, tokenizer, test, "causal_lm", batch_size=4, max_len=256)
    in_order = t.predict(model, tokenizer, test, "causal_lm", batch_size=4, max_len=256, by_length=False)
    one_by_one = t.predict(model, tokenizer, test, "causal_lm", batch_size=1, max_len=256, by_length=False)
    assert by_length == in_order == one_by_one


def test_decoding_uses_the_cache_and_stops_when_every_sequence_has_ended() -> None:
    from harness.tasks.generation import generate_greedy

    model, tokenizer, t, test = scoring_setup("tiny-llama", "extract", 4, "fp32")
    prompts = [t.prompt_ids(tokenizer, r) for r in test][:2]
    widths: list[int] = []
    hook = model.model.register_forward_pre_hook(lambda m, args, kwargs: widths.append(kwargs["input_ids"].shape[1]),
                                                 with_kwargs=True)
    try:
        generate_greedy(model, tokenizer, prompts, "cpu", max_new_tokens=6)
        assert len(widths) == 6 and widths[0] == max(map(len, prompts)) and set(widths[1:]) == {1}  # KV cache
        # make every prompt's first greedy token the end of sequence: one forward pass (the prompt), nothing after
        with torch.no_grad():
            first = model(input_ids=torch.tensor([prompts[0]])).logits[0, -1].argmax().item()
        widths.clear()
        old = tokenizer.eos_token_id
        tokenizer.eos_token_id = first
        try:
            generate_greedy(model, tokenizer, prompts[:1], "cpu", max_new_tokens=6)
        finally:
            tokenizer.eos_token_id = old
        assert len(widths) == 1
    finally:
        hook.remove()


def test_the_head_gets_a_contiguous_input_and_the_answers_do_not_change() -> None:
    from harness.tasks.generation import generate_greedy

    model, tokenizer, t, test = scoring_setup("tiny-llama", "extract", 6, "fp32")
    prompts = [t.prompt_ids(tokenizer, r) for r in test]
    seen: list[bool] = []
    # a forward hook sees the input the head was called with, after every pre-hook
    spy = model.lm_head.register_forward_hook(lambda m, args, out: seen.append(args[0].is_contiguous()))
    try:
        ours = generate_greedy(model, tokenizer, prompts, "cpu", max_new_tokens=5)
        assert seen and all(seen)  # the prefill's last-position slice was made contiguous before the head
        n_hooks = len(model.lm_head._forward_pre_hooks)  # 0 once the context has removed its own
        seen.clear()
        width, pad = max(map(len, prompts)), tokenizer.pad_token_id
        ids = torch.tensor([[pad] * (width - len(p)) + p for p in prompts])
        mask = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in prompts])
        plain = model.generate(input_ids=ids, attention_mask=mask, max_new_tokens=5, do_sample=False,
                               pad_token_id=pad, eos_token_id=tokenizer.eos_token_id)
        assert seen[0] is False  # what generate hands the head without it: the strided view
    finally:
        spy.remove()
    assert n_hooks == 0
    assert ours == [tokenizer.decode(g[width:], skip_special_tokens=True).strip() for g in plain]


@pytest.mark.slow
def test_bundled_model_answers_are_unchanged_by_length_batching() -> None:
    # float32: in bfloat16 the batch's composition itself moves long greedy generations (measured here on this
    # split, untuned: prompt-order batches of 8 vs of 4 agreed on 19 of 24 answers), whichever order is used
    model, tokenizer, t, test = scoring_setup("smollm2-135m", "extract", 24, "fp32")
    by_length = t.predict(model, tokenizer, test, "causal_lm", batch_size=8, max_len=256)
    in_order = t.predict(model, tokenizer, test, "causal_lm", batch_size=8, max_len=256, by_length=False)
    assert sum(a == b for a, b in zip(by_length, in_order)) == len(test), \
        [(a, b) for a, b in zip(by_length, in_order) if a != b][:3]
    assert t.score(by_length, list(test)) == t.score(in_order, list(test))


def test_a_shared_prefix_run_once_gives_the_same_next_token_scores() -> None:
    # the tiny random model answers newlines to everything, so compare what greedy decoding chooses from: the
    # scores of every generated position, prefix cached and middle-padded vs plain left padding
    from harness.tasks.generation import generation_inputs, shared_prefix

    model, tokenizer, t, test = scoring_setup("tiny-llama", "classify", 6, "fp32")
    prompts = [t.prompt_ids(tokenizer, r) for r in test]
    assert len(set(map(len, prompts))) > 1  # padding between the shared part and each prompt's own
    prefix = shared_prefix(model, prompts)
    assert len(prefix) >= 8 and all(p[:len(prefix)] == prefix and len(p) > len(prefix) for p in prompts)
    pad = tokenizer.pad_token_id
    runs = {}
    widths: list[int] = []
    hook = model.model.register_forward_pre_hook(lambda m, args, kwargs: widths.append(kwargs["input_ids"].shape[1]),
                                                 with_kwargs=True)
    try:
        for name, share in [("plain", None), ("shared", prefix)]:
            inputs = generation_inputs(prompts, pad, "cpu", model, share)
            with torch.no_grad():
                runs[name] = model.generate(**inputs, max_new_tokens=3, do_sample=False, pad_token_id=pad,
                                            output_scores=True, return_dict_in_generate=True).scores
    finally:
        hook.remove()
    longest = max(map(len, prompts))
    # plain: the whole prompt, then one token a step; shared: the prefix once, then only each prompt's own part
    assert widths[:3] == [longest, 1, 1] and widths[3:] == [len(prefix), longest - len(prefix), 1, 1]
    for plain, shared in zip(runs["plain"], runs["shared"]):
        torch.testing.assert_close(shared, plain, atol=1e-4, rtol=1e-4)


def test_no_prefix_is_shared_when_it_is_short_or_the_method_uses_the_cache() -> None:
    from peft import PrefixTuningConfig, get_peft_model

    from harness.tasks.generation import shared_prefix

    assert shared_prefix(None, [[1, 2, 3, 4], [1, 2, 3, 5]]) == []  # 3 shared tokens: not worth a pass
    long = list(range(20))
    assert shared_prefix(None, [long + [7], long + [8, 9]]) == long
    assert shared_prefix(None, [long, long + [8, 9]]) == long[:-1]  # every prompt keeps a token of its own
    model, tokenizer, t, test = scoring_setup("tiny-llama", "classify", 2, "fp32")
    prompts = [t.prompt_ids(tokenizer, r) for r in test]
    assert shared_prefix(model, prompts)
    prefix_tuned = get_peft_model(model, PrefixTuningConfig(task_type="CAUSAL_LM", num_virtual_tokens=4))
    assert shared_prefix(prefix_tuned, prompts) == []  # peft feeds its virtual tokens through the cache


@pytest.mark.slow
def test_bundled_model_answers_are_unchanged_by_the_shared_prefix() -> None:
    for task in ("classify", "extract"):
        model, tokenizer, t, test = scoring_setup("smollm2-135m", task, 16, "fp32")
        shared = t.predict(model, tokenizer, test, "causal_lm", batch_size=8, max_len=256)
        plain = t.predict(model, tokenizer, test, "causal_lm", batch_size=8, max_len=256, share_prefix=False)
        assert shared == plain, [(a, b) for a, b in zip(shared, plain) if a != b][:3]
        assert any(shared)  # real answers, not a degenerate empty output


def test_eval_benchmark_answers_the_same_prompts_as_the_plain_loop() -> None:
    from benchmarks.eval_bench import measure

    row = measure("tiny-llama", "extract", 6, batch_size=4, precision="fp32")
    assert row["examples"] == 6 and row["same_answers"] == 6  # same prompts, same greedy answers
    assert row["same_answers_unshared"] == 6 and row["prefix_speedup"] == pytest.approx(row["unshared_s"] / row["harness_s"], rel=1e-2)
    assert row["harness_examples_per_s"] > 0 and row["speedup"] == pytest.approx(row["plain_s"] / row["harness_s"], rel=1e-2)


def test_a_moving_matmul_limit_flags_the_invocation() -> None:
    from benchmarks.verdict import Limits, verdict_markdown

    quiet, noisy = Limits(), Limits()
    quiet.readings = [{"at": str(i), "gflops": g} for i, g in enumerate([1000, 1050, 980])]
    noisy.readings = [{"at": str(i), "gflops": g} for i, g in enumerate([1000, 700, 990])]
    assert not quiet.summary()["too_noisy"] and noisy.summary()["too_noisy"]
    assert "TOO NOISY" in verdict_markdown([], [], noisy.summary())
    assert "TOO NOISY" not in verdict_markdown([], [], quiet.summary())


def test_a_sweeps_slots_add_up_to_its_wall_time_and_give_each_run_its_overhead_ratio() -> None:
    from benchmarks.verdict import sweep_slots

    def run(started, ended, train, evaluate, cached):
        return {"ended_s": ended, "wall_s": ended - started, "train_runtime_s": train,
                "base_cached": cached, "phases_s": {"evaluate": evaluate, "forgetting_probe": 2.0}}

    timings = {"wall_s": 100.0, "python_startup_s": 1.0, "phases_s": {"imports": 6.0},
               "runs": [run(8.0, 40.0, 20.0, 5.0, False), run(41.0, 70.0, 25.0, 1.0, True), run(70.5, 98.0, 25.0, 0.5, True)]}
    out = sweep_slots(timings)
    assert [r["slot_s"] for r in out["runs"]] == [40.0, 30.0, 28.0]  # the gaps between runs belong to the next
    assert [r["overhead_ratio"] for r in out["runs"]] == pytest.approx([1.0, 0.2, 0.12])
    assert out["later_runs_overhead_ratio_median"] == pytest.approx(0.16)  # imports and base scores paid by run 0
    assert out["overhead_ratio"] == pytest.approx(30 / 70) and out["process_start_and_imports_s"] == 7.0
    assert [r["fixed_overhead_s"] for r in out["runs"]] == pytest.approx([5.0, 1.0, 0.0])


@pytest.mark.parametrize("budget,epochs,max_steps", [("quick", None, 4), ("default", None, 80), ("study", 1, None)])
def test_each_sweep_budget_composes_to_the_runs_it_names(budget: str, epochs, max_steps, tmp_path) -> None:
    from hydra import compose, initialize_config_dir

    from benchmarks.verdict import sweep_budget
    from harness.assets import CONF_DIR

    args, conf, name = sweep_budget(budget, batch_size=4, n_eval=8), CONF_DIR, "config"
    if "--config-dir" in args:  # its folder joins conf/ on the search path, as in `make sweep`
        folder, name = args[args.index("--config-dir") + 1], args[args.index("--config-name") + 1]
        args = [o for o in args if "=" in o]
        conf = conf_with(Path(folder), tmp_path / "conf")
    with initialize_config_dir(config_dir=str(conf), version_base="1.3"):
        cfg = compose(config_name=name, overrides=[*args, "method=lora", "task=classify", "seed=1"])
    assert (cfg.train.epochs, cfg.train.max_steps) == (epochs, max_steps)
    assert cfg.task.name == "classify" and cfg.method.name == "lora" and cfg.seed == 1
    assert cfg.group == ("fair-classify" if budget == "study" else None)  # the study's own file, its W&B group
    if budget == "study":  # a cell of the deciding study, on its own model, seeds only (no search, no variants)
        assert cfg.r == 16 and cfg.targets.name == "all-linear" and cfg.model.name == "minilm-l6"
        assert cfg.train.precision == "fp32" and cfg.sweep.variants is None and cfg.sweep.lr_search == 0


def test_the_matmul_limit_times_emulated_bf16_on_a_small_product_only(monkeypatch) -> None:
    """Without native bf16 a 2048^3 bf16 product takes about a minute: the bench times a 512^3 probe instead,
    says so, and reads its noise limit in fp32."""
    import torch

    import harness.config
    from benchmarks import matmul
    from benchmarks.verdict import Limits

    monkeypatch.setattr(harness.config, "native_bf16", lambda: False)
    monkeypatch.setattr(matmul, "matmul_gflops", lambda m, k, n, dtype, repeats=10: {
        "gflops_median": 1.0 if dtype == torch.bfloat16 else 100.0, "shape": (m, k, n)})
    out = matmul.measure(repeats=1, shapes=["2048x2048x2048"])
    assert not out["bf16_native"] and list(out["rates"]["bf16"]) == [matmul.EMULATED_PROBE]
    assert out["rates"]["bf16"][matmul.EMULATED_PROBE]["emulated"] and out["rates"]["bf16"][matmul.EMULATED_PROBE]["shape"] == (512, 512, 512)
    assert matmul.peak(out, "bf16") == 1.0 and matmul.peak(out, "fp32") == 100.0
    limits = Limits()
    limits.read("x")
    assert limits.readings == [{"at": "x", "gflops": 100.0, "dtype": "float32"}]


def test_encoder_length_batching_keeps_labels_and_their_order() -> None:
    model, tokenizer, t, test = scoring_setup("tiny-bert", "classify", 24, "fp32")
    torch.manual_seed(0)
    with torch.no_grad():  # a random head centred on these texts, so they get different labels (a random tiny
        # model's pooled outputs differ by ~1e-3 around a common part that alone would pick the label)
        model.eval()
        enc = tokenizer([t.encoder_text(r) for r in test], padding=True, return_tensors="pt")
        pooled = model.bert(**enc).pooler_output
        model.classifier.weight.normal_(0, 1.0 / float(pooled.std(0).mean()))
        model.classifier.bias.copy_(-model.classifier.weight @ pooled.mean(0))
    by_length = t.predict(model, tokenizer, test, "encoder", batch_size=8, max_len=128)
    in_order = t.predict(model, tokenizer, test, "encoder", batch_size=8, max_len=128, by_length=False)
    one_by_one = t.predict(model, tokenizer, test, "encoder", batch_size=1, max_len=128, by_length=False)
    assert len(set(one_by_one)) > 1  # the case where a row's place matters
    assert by_length == in_order == one_by_one


def test_the_encoder_scoring_bench_compares_the_two_batchings() -> None:
    from benchmarks.eval_bench import measure_encoder

    row = measure_encoder("tiny-bert", "classify", 16, batch_size=4)
    assert row["examples"] == 16 and row["same_answers"] == 16 and row["speedup"] > 0
