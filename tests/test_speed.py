"""The speed switches (train.padding_free, train.labelled_logits_only) change how a batch is computed, never what:
same loss, same gradients, same token count as padded batches with logits everywhere."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from transformers import DataCollatorForSeq2Seq, DataCollatorWithFlattening

from conftest import TINY, compose, run_inprocess


@pytest.fixture(scope="module")
def tiny_llama():
    from harness.assets import cache_dir
    from harness.models import load_model, load_tokenizer
    from harness.tasks import get_task

    cfg = compose(["model=tiny-llama", "tracking=none"])
    cache = cache_dir(cfg.paths.cache)
    task = get_task(cfg.task, cache)
    tokenizer = load_tokenizer(cfg.model, cache)
    features = task.train_dataset(task.splits()["train"].select(range(6)), tokenizer, "causal_lm", 256)
    model = load_model(cfg.model, cache, precision="fp32", tokenizer=tokenizer)
    return model, tokenizer, [dict(f) for f in features]


def _loss_and_grads(model, batch) -> tuple[float, torch.Tensor]:
    model.zero_grad()
    out = model(**batch)
    out.loss.backward()
    return out.loss.item(), torch.cat([p.grad.flatten() for p in model.parameters() if p.grad is not None])


@pytest.mark.parametrize(("flat", "labelled", "attention"), [
    (True, False, "sdpa"), (False, True, "sdpa"), (True, True, "sdpa"),  # transformers' own packed-row mask
    (True, True, "packed-eager"), (True, True, "packed-sdpa"),  # harness.packed_attention.packed_attention, both paths
])
def test_batches_give_the_padded_loss_and_gradients(tiny_llama, flat: bool, labelled: bool, attention: str,
                                                    monkeypatch) -> None:
    from harness import packed_attention
    from harness.training_batches import CausalBatches

    model, tokenizer, features = tiny_llama
    padded = DataCollatorForSeq2Seq(tokenizer, padding=True, label_pad_token_id=-100)
    assert len({len(f["input_ids"]) for f in features}) > 1, "examples of different lengths, so padding happens"
    ref_loss, ref_grads = _loss_and_grads(model, padded(features))
    batch = CausalBatches(DataCollatorWithFlattening() if flat else padded, labelled)(features)
    if attention != "sdpa":
        monkeypatch.setattr(packed_attention, "EAGER_MAX_LEN", 10_000 if attention == "packed-eager" else 0)
        callback = packed_attention.PackedAttention(model)
        callback.on_train_begin(None, None, None)
        assert model.config._attn_implementation == packed_attention.PACKED_ATTENTION
        calls: list[tuple[int, bool]] = []
        real_sdpa = packed_attention.sdpa_attention_forward

        def recording_sdpa(module, query, key, value, mask, *args, **kwargs):
            calls.append((query.shape[0], mask is None))
            return real_sdpa(module, query, key, value, mask, *args, **kwargs)

        monkeypatch.setattr(packed_attention, "sdpa_attention_forward", recording_sdpa)
    if flat:
        assert batch["input_ids"].shape == (1, sum(len(f["input_ids"]) for f in features))
    if labelled:
        n_labelled = sum(sum(1 for t in f["labels"][1:] if t != -100) for f in features)
        assert int(batch["logits_to_keep"].sum()) == n_labelled == len(batch["shift_labels"])
    loss, grads = _loss_and_grads(model, batch)
    if attention != "sdpa":
        callback.on_train_end(None, None, None)
        assert model.config._attn_implementation == "sdpa"
        # eager: no SDPA call at all; sdpa: one call per layer, one row per example, no dense mask
        assert calls == ([] if attention == "packed-eager" else [(len(features), True)] * model.config.num_hidden_layers)
    assert abs(loss - ref_loss) < 1e-5 * abs(ref_loss)
    assert (grads - ref_grads).norm() < 1e-5 * ref_grads.norm()



def test_collator_choice_follows_method_and_switches(tiny_llama, tmp_path: Path) -> None:
    import peft
    from transformers import DataCollatorWithPadding

    from harness.training import build_trainer, training_arguments
    from harness.training_batches import CausalBatches

    model, tokenizer, features = tiny_llama
    train = compose(["model=tiny-llama", "tracking=none"]).train
    args = training_arguments(train, 1e-4, "fp32", 0, tmp_path)
    lora = peft.get_peft_model(model, peft.LoraConfig(r=4, target_modules=["q_proj"], task_type="CAUSAL_LM"))
    collator = build_trainer(lora, tokenizer, features, args, "causal_lm", []).data_collator.collator
    assert isinstance(collator, CausalBatches) and collator.labelled_only
    assert isinstance(collator.collator, DataCollatorWithFlattening)
    assert args.include_num_input_tokens_seen == "all"  # no padding left to leave out
    lora.unload()

    prefix = peft.get_peft_model(model, peft.PrefixTuningConfig(num_virtual_tokens=4, task_type="CAUSAL_LM"))
    args = training_arguments(train, 1e-4, "fp32", 0, tmp_path)
    collator = build_trainer(prefix, tokenizer, features, args, "causal_lm", []).data_collator.collator
    assert isinstance(collator, DataCollatorForSeq2Seq), "virtual tokens: padded batches, logits everywhere"

    off = compose(["model=tiny-llama", "tracking=none", "train.padding_free=false", "train.labelled_logits_only=false"])
    args = training_arguments(off.train, 1e-4, "fp32", 0, tmp_path)
    collator = build_trainer(model, tokenizer, features, args, "causal_lm", []).data_collator.collator
    assert isinstance(collator, CausalBatches) and not collator.labelled_only
    assert isinstance(collator.collator, DataCollatorForSeq2Seq)
    assert isinstance(build_trainer(model, tokenizer, features, args, "encoder", []).data_collator.collator,
                      DataCollatorWithPadding)


@pytest.mark.parametrize("flat", [True, False])
def test_largest_batch_shape_is_what_the_model_computes(tiny_llama, flat: bool) -> None:
    """The shape the estimator's --check predicts from: tokens the layers see, rows, the longest row, and the
    positions the head projects (labelled only, or every position)."""
    from transformers import DataCollatorWithFlattening

    from harness.training_batches import BatchShapes, CausalBatches

    _, tokenizer, features = tiny_llama
    padded = DataCollatorForSeq2Seq(tokenizer, padding=True, label_pad_token_id=-100)
    shapes = BatchShapes(CausalBatches(DataCollatorWithFlattening() if flat else padded, labelled_only=flat))
    small, large = features[:2], features[2:6]
    for group in (small, large, small):
        shapes(list(group))
    lengths = [len(f["input_ids"]) for f in large]
    labelled = sum(sum(label != -100 for label in f["labels"][1:]) for f in large)
    expected_tokens = sum(lengths) if flat else len(large) * max(lengths)
    assert shapes.largest == {"tokens": expected_tokens, "rows": 4, "longest_row": max(lengths),
                              "logit_positions": labelled if flat else expected_tokens, "flattened": flat}


def test_switches_leave_the_run_unchanged(runs: Path) -> None:
    """Same seed with and without the switches: same tokens counted, same loss curve (fp32, tiny Llama)."""
    base = ["model=tiny-llama", "method=full", *TINY, "train.precision=fp32", "train.max_steps=3"]
    fast, _ = run_inprocess(base, runs / "fast")
    plain, _ = run_inprocess(base + ["train.padding_free=false", "train.labelled_logits_only=false"], runs / "plain")
    assert fast["train_tokens"] == plain["train_tokens"] > 0
    for (step_a, loss_a), (step_b, loss_b) in zip(fast["loss_curve"], plain["loss_curve"], strict=True):
        assert step_a == step_b and abs(loss_a - loss_b) < 1e-4 * abs(loss_b)
    assert fast["score"] == plain["score"]
