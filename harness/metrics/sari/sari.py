"""SARI (Xu et al. 2016): an edit-aware score of a rewrite against its source and references, as an offline
`evaluate` module, scaled to 0..1 like the harness's other scorers.

    evaluate.load("harness/metrics/sari").compute(sources=[...], predictions=[...], references=[[...], ...])

SARI asks whether the n-grams a system adds, keeps and deletes relative to the source are the ones the references
add, keep and delete: per n-gram order 1-4 the keep F1, the deletion precision and the add F1, each averaged over
the orders, then the mean of the three. Copying the source adds nothing, so its add F1 is 0 whenever the
references add anything, which chrF against the reference does not see (copying scores chrF 0.676 on `style`).

This reproduces the HuggingFace `evaluate` metric `sari` (metrics/sari/sari.py, checked against it at commit
a7dd338 of huggingface/evaluate), which is Wei Xu's SARI.py (cocoxu/simplification, commit 0210f15) with two
changes taken from tensor2tensor's sari_hook: 0/0 counts as 1 (a prediction that matches a reference exactly
scores 1), and the keep recall divides by the count of kept reference n-grams (the "alleged bug" of
cocoxu/simplification issue 6). Text is lowercased and tokenised with sacrebleu's 13a tokenizer (as HF and EASSE
do), then split on single spaces. The corpus score is the mean of the sentence scores, exactly as HF computes it
(`sari_score += SARIsent(...)`, then `/ len(predictions)`), so per-item stats [sentence SARI, 1] aggregate by mean.
With `items_for` one of "sari", "sari_keep", "sari_delete", "sari_add" the result also holds `item_scores` (each
sentence's value of that part) and `item_stats` ([value, 1], harness/items.py), the harness's per-item protocol.

Not reproduced: EASSE's `corpus_sari` (default), which pools n-gram counts over the corpus before the F1s and
scores deletion by F1, and so gives different numbers; nor HF's optional moses/penn tokenizers (sacremoses).
"""

from collections import Counter

import datasets
import evaluate

import sacrebleu

from harness.items import mean_stats

MAX_ORDER = 4  # n-grams 1..4, as in the paper
TOKENIZERS = ("13a", "intl", "none")
PARTS = ("sari", "sari_keep", "sari_delete", "sari_add")  # the result's keys, in `sentence_sari`'s order


def normalize(sentence: str, lowercase: bool = True, tokenizer: str = "13a") -> str:
    """The sentence as HF's `sari` normalises it: lowercased, then sacrebleu-tokenised (tokens joined by spaces)."""
    if lowercase:
        sentence = sentence.lower()
    if tokenizer == "none":
        return sentence
    return sacrebleu.metrics.bleu._get_tokenizer(tokenizer)()(sentence)


def ngrams(tokens: list[str], n: int) -> list[str]:
    return [" ".join(tokens[i:i + n]) for i in range(len(tokens) - n + 1)]


def _f1(precision: float, recall: float) -> float:
    return 2 * precision * recall / (precision + recall) if precision > 0 or recall > 0 else 0.0


def ngram_scores(source: list[str], output: list[str], references: list[list[str]]) -> tuple[float, float, float]:
    """(keep F1, deletion precision, add F1) of one n-gram order: HF's `SARIngram`, step for step.

    Source and output counts are multiplied by the number of references, so an n-gram kept by k of the references
    counts as k/numref of a correct keep (Counter `&` is the minimum count, `-` the positive difference)."""
    numref = len(references)
    ref_counts = Counter(gram for ref in references for gram in ref)
    src_counts = Counter(source)
    out_counts = Counter(output)
    src_rep = Counter({g: c * numref for g, c in src_counts.items()})
    out_rep = Counter({g: c * numref for g, c in out_counts.items()})

    kept = src_rep & out_rep
    kept_good = kept & ref_counts
    kept_by_refs = src_rep & ref_counts
    keep_precision = sum(kept_good[g] / kept[g] for g in kept_good) / len(kept) if kept else 1.0
    keep_recall = sum(kept_good.values()) / sum(kept_by_refs.values()) if kept_by_refs else 1.0

    deleted = src_rep - out_rep
    deleted_good = deleted - ref_counts
    del_precision = sum(deleted_good[g] / deleted[g] for g in deleted_good) / len(deleted) if deleted else 1.0

    added = set(out_counts) - set(src_counts)  # additions count once each (sets), as in the reference code
    added_good = added & set(ref_counts)
    added_by_refs = set(ref_counts) - set(src_counts)
    add_precision = len(added_good) / len(added) if added else 1.0
    add_recall = len(added_good) / len(added_by_refs) if added_by_refs else 1.0
    return _f1(keep_precision, keep_recall), del_precision, _f1(add_precision, add_recall)


def sentence_sari(source: str, output: str, references: list[str]) -> tuple[float, float, float, float]:
    """(SARI, keep, delete, add) of one already-normalised sentence, in 0..1 (HF's `SARIsent` and its parts)."""
    if not references:
        raise ValueError("SARI needs at least one reference per sentence")
    src, out = source.split(" "), output.split(" ")  # split(" ") as in HF: an empty string is one empty token
    refs = [r.split(" ") for r in references]
    parts = [ngram_scores(ngrams(src, n), ngrams(out, n), [ngrams(r, n) for r in refs])
             for n in range(1, MAX_ORDER + 1)]
    keep, delete, add = (sum(p[i] for p in parts) / MAX_ORDER for i in range(3))
    return (keep + delete + add) / 3, keep, delete, add


class Sari(evaluate.Metric):
    def _info(self):
        return evaluate.MetricInfo(
            description="SARI (mean of add F1, keep F1 and deletion precision over n-grams 1-4), as HF evaluate's "
                        "`sari`, divided by 100.",
            citation="Xu, Napoles, Pavlick, Chen, Callison-Burch (2016) Optimizing Statistical Machine Translation "
                     "for Text Simplification, TACL 4:401-415",
            inputs_description="sources, predictions: lists of strings; references: a list of reference strings per "
                               "prediction. Options: lowercase (True), tokenizer ('13a', 'intl' or 'none'), "
                               "return_items (False): also the per-sentence SARI under `sari_items`; items_for "
                               "(None or one of the result's keys): also `item_scores` and `item_stats` of it.",
            features=datasets.Features({
                "sources": datasets.Value("string"),
                "predictions": datasets.Value("string"),
                "references": datasets.Sequence(datasets.Value("string")),
            }),
            reference_urls=["https://aclanthology.org/Q16-1029", "https://github.com/cocoxu/simplification"],
        )

    def _compute(self, sources, predictions, references, lowercase=True, tokenizer="13a", return_items=False,
                 items_for=None):
        if tokenizer not in TOKENIZERS:
            raise ValueError(f"sari tokenizer {tokenizer!r} is not supported; use one of {', '.join(TOKENIZERS)}")
        if not (len(sources) == len(predictions) == len(references)):
            raise ValueError("sari: sources, predictions and references must have the same length")
        rows = [sentence_sari(normalize(src, lowercase, tokenizer), normalize(pred, lowercase, tokenizer),
                              [normalize(r, lowercase, tokenizer) for r in refs])
                for src, pred, refs in zip(sources, predictions, references)]
        n = len(rows)
        result = {name: sum(row[i] for row in rows) / n if n else float("nan")
                  for i, name in enumerate(PARTS)}
        if return_items:
            result["sari_items"] = [row[0] for row in rows]
        if items_for in PARTS:
            result["item_scores"] = [row[PARTS.index(items_for)] for row in rows]
            result["item_stats"] = [mean_stats(score) for score in result["item_scores"]]
        return result
