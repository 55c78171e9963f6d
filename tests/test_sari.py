"""The SARI module against the values HuggingFace documents for its `sari` metric (and for `wiki_split`, which
embeds the same SARI), a case worked out by hand, copying against the reference on style-task verses, and the
per-item stats that resampling sums."""

from __future__ import annotations

import numpy as np
import pytest

from harness.items import aggregate, mean_stats
from harness.tasks.base import load_metric

SOURCE = "About 95 species are currently accepted ."
THREE_REFS = ["About 95 species are currently known .", "About 95 species are now accepted .",
              "95 species are now accepted ."]
# World English Bible (modern) -> King James Version, two verses of the style task's validation pool
VERSES = [
    ("All his servants passed on beside him; and all the Cherethites, and all the Pelethites, and all the Gittites, "
     "six hundred men who came after him from Gath, passed on before the king.",
     "And all his servants passed on beside him; and all the Cherethites, and all the Pelethites, and all the "
     "Gittites, six hundred men which came after him from Gath, passed on before the king."),
    ("But the testimony which I receive is not from man. However, I say these things that you may be saved.",
     "But I receive not testimony from man: but these things I say, that ye might be saved."),
]


@pytest.fixture(scope="module")
def sari():
    return load_metric("sari")


@pytest.mark.parametrize("prediction, references, documented", [
    # huggingface/evaluate metrics/sari/README.md, "Partial match" and "Perfect match"
    ("About 95 you now get in .", THREE_REFS, 26.953601953601954),
    (SOURCE, [SOURCE], 100.0),
    # metrics/wiki_split/README.md: its `sari` with one reference ("Partial match", "No match")
    ("About 95 you now get in .", ["About 95 species are currently known ."], 21.805555555555557),
    ("Hello world .", ["About 95 species are currently known ."], 14.047619047619046),
])
def test_documented_hf_values(sari, prediction, references, documented) -> None:
    result = sari.compute(sources=[SOURCE], predictions=[prediction], references=[references])
    assert 100 * result["sari"] == pytest.approx(documented, abs=1e-9)
    assert result["sari"] == pytest.approx((result["sari_keep"] + result["sari_delete"] + result["sari_add"]) / 3)


def test_13a_tokenisation_and_lowercasing(sari) -> None:
    """The metric card's first example is untokenised ("accepted."): 13a splits the full stop off, so the value
    is the tokenised one; case does not matter."""
    untokenised = sari.compute(sources=["About 95 species are currently accepted."],
                               predictions=["ABOUT 95 you now get in."],
                               references=[[r.replace(" .", ".") for r in THREE_REFS]])
    assert 100 * untokenised["sari"] == pytest.approx(26.953601953601954, abs=1e-9)


def test_by_hand(sari) -> None:
    # source "a b", output "a d", reference "a c". Keep: 1-gram "a" kept and in the reference (F1 1); no 2-gram
    # is kept by either (0/0 = 1); 3-, 4-grams empty (1). Delete: "b" and "a b" deleted, neither in the reference
    # (precision 1). Add: "d" and "a d" added, neither in the reference (F1 0); 3-, 4-grams empty (1): add 1/2.
    result = sari.compute(sources=["a b"], predictions=["a d"], references=[["a c"]], tokenizer="none")
    assert (result["sari_keep"], result["sari_delete"], result["sari_add"]) == pytest.approx((1.0, 1.0, 0.5))
    assert result["sari"] == pytest.approx(2.5 / 3)


def test_copying_scores_far_below_the_reference(sari) -> None:
    """Copying the modern verse adds nothing the KJV adds (add F1 0) and deletes nothing (deletion precision
    0/0 = 1 by HF's convention), so it scores 0.549 here (0.538 on the whole validation pool) where the
    reference scores 0.994; chrF gives copying 0.676 against the LoRA run's 0.675."""
    sources, targets = [s for s, _ in VERSES], [[t] for _, t in VERSES]
    copy = sari.compute(sources=sources, predictions=sources, references=targets)
    reference = sari.compute(sources=sources, predictions=[t for _, t in VERSES], references=targets)
    assert copy["sari_add"] == 0.0 and copy["sari_delete"] == 1.0
    assert copy["sari"] == pytest.approx(0.5490, abs=1e-3)
    assert reference["sari"] == pytest.approx(0.9940, abs=1e-3)
    assert reference["sari"] - copy["sari"] > 0.4


def test_per_item_stats_aggregate_to_the_corpus_score(sari) -> None:
    """HF's corpus SARI is the mean of sentence SARIs, so stats [sentence SARI, 1] summed over any resample give it."""
    sources = [SOURCE, SOURCE, *(s for s, _ in VERSES)]
    predictions = ["About 95 you now get in .", "Hello world .", VERSES[0][1], VERSES[1][0]]
    references = [THREE_REFS, THREE_REFS[:1], [VERSES[0][1]], [VERSES[1][1]]]
    result = sari.compute(sources=sources, predictions=predictions, references=references, return_items=True)
    items = result["sari_items"]
    assert len(items) == 4 and items[0] == pytest.approx(0.26953601953601954)
    stats = np.array([mean_stats(s) for s in items])
    assert aggregate("sari", stats.sum(axis=0)) == pytest.approx(result["sari"])
    resample = stats[[0, 0, 3]].sum(axis=0)
    assert aggregate("sari", resample) == pytest.approx((2 * items[0] + items[3]) / 3)


def test_bad_options_fail_before_scoring(sari) -> None:
    with pytest.raises(ValueError, match="tokenizer 'moses' is not supported"):
        sari.compute(sources=["a"], predictions=["a"], references=[["a"]], tokenizer="moses")
    with pytest.raises(ValueError, match="at least one reference"):
        sari.compute(sources=["a"], predictions=["a"], references=[[]])
