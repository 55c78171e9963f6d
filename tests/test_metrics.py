"""Every metric module against values worked out by hand on small inputs (unparseable JSON and empty answers
included), the tasks' scoring on top of them, and the forgetting probe on the tiny model."""

from __future__ import annotations

import json
import math

import pytest
import torch
from omegaconf import OmegaConf

from harness.assets import cache_dir
from harness.tasks import CONF_TASK_DIR, get_task
from harness.tasks.base import load_metric

REF = json.dumps({"sentiment": "negative", "hashtags": ["#b", "#a"], "mentions": [], "has_url": False})


def test_chrf_and_bleu_by_hand() -> None:
    metric = load_metric("text_similarity")
    same = metric.compute(predictions=["the same words here"], references=["the same words here"])
    assert same["chrf"] == pytest.approx(1.0) and same["bleu"] == pytest.approx(1.0)
    # "abcdef" vs "abcdeg": character n-gram precision = recall = 5/6, 4/5, 3/4, 2/3, 1/2, 0/1 for n = 1..6,
    # so every per-order F equals it and chrF is their mean.
    chrf = metric.compute(predictions=["abcdef"], references=["abcdeg"])["chrf"]
    assert chrf == pytest.approx((5 / 6 + 4 / 5 + 3 / 4 + 2 / 3 + 1 / 2 + 0) / 6)
    # "a b c d e" vs "a b c d f": n-gram precisions 4/5, 3/4, 2/3, 1/2, equal lengths (no brevity penalty)
    bleu = metric.compute(predictions=["a b c d e"], references=["a b c d f"])["bleu"]
    assert bleu == pytest.approx((4 / 5 * 3 / 4 * 2 / 3 * 1 / 2) ** 0.25)
    empty = metric.compute(predictions=[""], references=["In the beginning"])
    assert empty == {"chrf": 0.0, "bleu": 0.0}


def test_json_fields_by_hand() -> None:
    metric = load_metric("json_fields")
    predictions = [
        '```json\n{"sentiment": "Negative", "hashtags": ["#A", "#b"], "mentions": [], "has_url": false}\n```',  # all 4 right
        "I cannot do that.",                                                                                  # unparseable
        "",                                                                                                   # empty
        '{"sentiment": "positive", "hashtags": "#x", "has_url": "true"}',  # 1 right: wrong types, mentions missing
        '{"sentiment": "neutral", "hashtags": [], "mentions": ["@u"], "has_url": true',                      # truncated
    ]
    references = [REF, REF, json.dumps({"sentiment": "neutral", "hashtags": [], "mentions": ["@u"], "has_url": True}),
                  json.dumps({"sentiment": "positive", "hashtags": ["#x"], "mentions": [], "has_url": True}),
                  json.dumps({"sentiment": "neutral", "hashtags": [], "mentions": ["@u"], "has_url": True})]
    result = metric.compute(predictions=predictions, references=references)
    assert result["sentiment_accuracy"] == pytest.approx(2 / 5)
    for field in ("hashtags", "mentions", "has_url"):
        assert result[f"{field}_accuracy"] == pytest.approx(1 / 5)
    assert result["field_accuracy"] == pytest.approx((2 / 5 + 3 * 1 / 5) / 4)  # == mean over rows of (4 + 0 + 0 + 1 + 0) / 4
    assert result["json_valid_rate"] == pytest.approx(2 / 5)
    nothing = metric.compute(predictions=["", "{"], references=[REF, REF])
    assert nothing["field_accuracy"] == 0.0 and nothing["json_valid_rate"] == 0.0


def test_exact_match_by_hand() -> None:
    metric = load_metric("exact_match")
    result = metric.compute(predictions=["Lisbon.", "It is Lisbon", "", "oslo\nand more", "Lisbonia"],
                            references=["Lisbon", "Lisbon", "Oslo", "Oslo", "Lisbon"])
    assert result["exact_match"] == pytest.approx(2 / 5)  # "Lisbon." and the first line "oslo"
    assert result["contains"] == pytest.approx(3 / 5)     # plus "It is Lisbon"; "Lisbonia" is another word


def test_classification_by_hand() -> None:
    metric = load_metric("classification")
    result = metric.compute(predictions=["positive", "", "negative", "negative"],
                            references=["positive", "negative", "negative", "neutral"],
                            labels=["negative", "neutral", "positive"])
    assert result["accuracy"] == pytest.approx(2 / 4)
    # F1 per class: negative P=1/2 R=1/2 -> 1/2; neutral 0; positive 1  -> macro (1/2 + 0 + 1) / 3
    assert result["macro_f1"] == pytest.approx(0.5)


def task(name: str, **overrides):
    return get_task(OmegaConf.merge(OmegaConf.load(CONF_TASK_DIR / f"{name}.yaml"), overrides), cache_dir())


def test_style_reports_the_copy_baseline() -> None:
    style = task("style")
    assert style.primary_metric == "sari"
    rows = [{"ref": "", "source": "You are blessed.", "target": "Blessed art thou."},
            {"ref": "", "source": "He said to them,", "target": "And he said unto them,"}]
    copied = style.score([r["source"] for r in rows], rows)
    assert copied["sari"] == copied["copy_sari"] < 1 and copied["chrf"] == copied["copy_chrf"] < 1
    assert copied["sari_add"] == copied["copy_sari_add"] == 0.0
    perfect = style.score([r["target"] for r in rows], rows)
    assert perfect["sari"] == pytest.approx(1.0) and perfect["chrf"] == pytest.approx(1.0)
    assert perfect["copy_sari"] == copied["copy_sari"] and perfect["copy_chrf"] == copied["copy_chrf"]
    assert style.score(["", ""], rows)["chrf"] == 0.0


def test_style_sari_credits_the_edit_that_chrf_ranks_below_a_near_copy() -> None:
    """A partial move to KJV wording ("art", "thou") against a near copy that only reorders ("Blessed are you"):
    chrF against the KJV verse prefers the near copy; SARI prefers the edit, which adds what the KJV adds."""
    style = task("style")
    rows = [{"ref": "", "source": "You are blessed.", "target": "Blessed art thou."},
            {"ref": "", "source": "He said to them,", "target": "And he said unto them,"}]
    edit = style.score(["You art blessed thou.", "And he said to them,"], rows)
    near_copy = style.score(["Blessed are you.", "And he said to them,"], rows)
    assert edit["chrf"] < near_copy["chrf"]
    assert edit["sari"] > near_copy["sari"] and edit["sari_add"] > near_copy["sari_add"]
    assert edit["sari"] > edit["copy_sari"]


def test_classify_parses_one_word_answers() -> None:
    rows = [{"text": "t", "label": "positive"}, {"text": "t", "label": "neutral"}, {"text": "t", "label": "negative"}]
    result = task("classify").score(["Positive.", "", "The sentiment is negative"], rows)
    assert result["accuracy"] == pytest.approx(2 / 3) and result["answered_rate"] == pytest.approx(2 / 3)


def test_mixture_score_is_the_mean_of_task_scores() -> None:
    mixture = task("multitask")
    rows = [
        {"task": "classify", "template": 0, "row": json.dumps({"text": "t", "label": "positive"})},
        {"task": "classify", "template": 0, "row": json.dumps({"text": "t", "label": "negative"})},
        {"task": "knowledge", "template": 0, "row": json.dumps({"kind": "qa", "name": "A B", "attribute": "birth_city",
                                                                "question": "Where was A B born?", "answer": "Oslo"})},
        {"task": "extract", "template": 0, "row": json.dumps({"text": "hi", "sentiment": "negative", "target": REF})},
    ]
    result = mixture.score(["positive", "positive", "Oslo", "not json"], rows)
    assert result["classify/accuracy"] == 0.5 and result["knowledge/exact_match"] == 1.0
    assert result["extract/field_accuracy"] == 0.0 and "style/chrf" not in result  # no style rows given
    assert result["mean_score"] == pytest.approx((0.5 + 1.0 + 0.0) / 3)


# ---- forgetting probe ----

@pytest.fixture(scope="module")
def tiny():
    from harness.models import load_model, load_tokenizer

    cfg = OmegaConf.load(CONF_TASK_DIR.parent / "model" / "tiny-llama.yaml")
    tokenizer = load_tokenizer(cfg, cache_dir())
    return load_model(cfg, cache_dir(), precision="fp32", tokenizer=tokenizer), tokenizer


def test_probe_sample_is_fixed_general_text() -> None:
    from harness.forgetting import N_PASSAGES, probe_sample, sample_fingerprint

    first, second = probe_sample(), probe_sample()
    assert first == second and len(first) == N_PASSAGES == len(set(first))
    assert sample_fingerprint(first) == sample_fingerprint(second)
    assert all(p.isascii() and 120 <= len(p) <= 600 for p in first)


def test_probe_loss_equals_the_models_own_loss(tiny) -> None:
    from harness.forgetting import probe_loss, probe_sample

    model, tokenizer = tiny
    passages = probe_sample()[:2]
    enc = [tokenizer(p, truncation=True, max_length=128, return_tensors="pt") for p in passages]
    with torch.no_grad():
        losses = [model(**e, labels=e["input_ids"]).loss.item() for e in enc]
    assert probe_loss(model, tokenizer, passages[:1]) == pytest.approx(losses[0], rel=1e-5)
    # two passages of different lengths, padded into one batch: weighted by predicted tokens, not averaged
    counts = [e["input_ids"].shape[1] - 1 for e in enc]
    assert counts[0] != counts[1]
    weighted = (losses[0] * counts[0] + losses[1] * counts[1]) / sum(counts)
    assert probe_loss(model, tokenizer, passages, batch_size=2) == pytest.approx(weighted, rel=1e-5)
    model.train()  # the probe runs in eval mode (no dropout) and hands the model back as it found it
    whole = probe_loss(model, tokenizer, probe_sample())
    assert model.training
    assert math.isfinite(whole) and 0 < whole < 2 * math.log(len(tokenizer))  # random init: about log(vocab)


def test_probe_loss_projects_only_real_positions_in_length_order(tiny) -> None:
    """Batched longest first with the output head on positions whose next token is real: the same loss as one
    passage at a time, at every batch size, and the head sees no padding."""
    from harness.forgetting import probe_loss, probe_sample

    model, tokenizer = tiny
    passages = probe_sample()[:7]
    ids = [tokenizer(p, truncation=True, max_length=128)["input_ids"] for p in passages]
    one_by_one = sum(probe_loss(model, tokenizer, [p]) * (len(i) - 1) for p, i in zip(passages, ids))
    expected = one_by_one / sum(len(i) - 1 for i in ids)
    seen: list[int] = []
    head = model.get_output_embeddings()
    handle = head.register_forward_pre_hook(lambda mod, args: seen.append(args[0].shape[-2] * (
        args[0].shape[0] if args[0].dim() == 3 else 1)))
    try:
        for batch_size in (2, 3, 16):
            seen.clear()
            assert probe_loss(model, tokenizer, passages, batch_size=batch_size) == pytest.approx(expected, rel=1e-5)
            assert sum(seen) == sum(len(i) - 1 for i in ids)  # padded: batch x longest, more
    finally:
        handle.remove()


def test_probe_loss_under_prompt_tuning_keeps_the_plain_path(tiny) -> None:
    import peft

    from harness.forgetting import probe_loss, probe_sample
    from harness.training_batches import keeps_labelled_logits

    model, tokenizer = tiny
    assert keeps_labelled_logits(model)
    # prompt tuning wraps the shared fixture without changing its layers: virtual tokens shift the positions
    tuned = peft.get_peft_model(model, peft.PromptTuningConfig(task_type="CAUSAL_LM", num_virtual_tokens=4))
    assert not keeps_labelled_logits(tuned)
    assert math.isfinite(probe_loss(tuned, tokenizer, probe_sample()[:3], batch_size=2))
