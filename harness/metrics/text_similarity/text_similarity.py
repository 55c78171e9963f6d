"""Corpus chrF (primary for style transfer) and BLEU from sacrebleu, scaled to 0..1, as an offline `evaluate` module.

    evaluate.load("harness/metrics/text_similarity").compute(predictions=[...], references=[...])

chrF (character n-grams up to 6, beta 2) rewards partial word matches, so it tracks small stylistic edits
("believes" -> "believeth") that BLEU's word 4-grams miss. An empty prediction simply matches nothing.
With `items_for="chrf"` or `"bleu"` the result also holds `item_stats`, sacrebleu's per-sentence statistics
whose sums give the corpus score (harness/items.py), and `item_scores`, the sentence-level score from each.
"""

import evaluate

from harness.items import aggregate, sentence_stats
from harness.metrics import string_pairs_info
import sacrebleu


class TextSimilarity(evaluate.Metric):
    def _info(self):
        return string_pairs_info("sacrebleu corpus chrF and BLEU, divided by 100.",
                                 "predictions, references: lists of strings (one reference per prediction)",
                                 citation="Popovic (2015) chrF; Papineni et al. (2002) BLEU; Post (2018) sacreBLEU")

    def _compute(self, predictions, references, items_for=None):
        chrf = sacrebleu.corpus_chrf(predictions, [references])
        bleu = sacrebleu.corpus_bleu(predictions, [references])
        result = {"chrf": chrf.score / 100.0, "bleu": bleu.score / 100.0}
        if items_for in result:
            result["item_stats"] = sentence_stats(items_for, predictions, references)
            result["item_scores"] = [aggregate(items_for, s) for s in result["item_stats"]]
        return result
