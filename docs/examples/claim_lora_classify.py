"""A new ledger claim with its rule. Paste the function into analysis/claim_rules.py (the `@claim` decorator
registers it in CLAIMS, which `analysis.claims` applies in order), then `make claims` rebuilds the ledger and
results/REPORT.md from the committed records; commit both."""

from __future__ import annotations

from analysis.claim_rules import Evidence, Verdict, claim, threshold_rule


@claim(16, "LoRA keeps at least 90% of full fine-tuning's score on classification.")
def claim_16(ev: Evidence, v: Verdict) -> Verdict:
    """Every fair LoRA row of a classification cell: supported when the lower end of retention's 95% interval is
    >= 90% in every row, refuted when an upper end is < 90%, otherwise inconclusive; not run without such a row."""
    fair = ev.fair()
    rows = fair[(fair["method"] == "lora") & (fair["task"] == "classify")] if not fair.empty else fair
    if rows.empty:
        v.missing = "fair LoRA rows on classify (make sweep TASK=fair-classify)"
        return v
    return threshold_rule(v, rows, 90.0)
