"""A new ledger claim with its rule. Paste the function into analysis/claims/rules.py with the next free claim
number (the `@claim` decorator registers it in CLAIMS, which `analysis.claims` applies in order), then
`make claims` rebuilds the ledger and results/REPORT.md from the committed records; commit both."""

from __future__ import annotations

from analysis.claims.rules import Evidence, Verdict, claim, threshold_rule


@claim(99, "LoRA keeps at least 90% of full fine-tuning's gain over the floor on classification.")
def claim_99(ev: Evidence, v: Verdict) -> Verdict:
    """Every fair LoRA row of a classification cell: supported when the lower end of gain retention's 95% interval
    ((LoRA - floor) / (full FT - floor), analysis/gain.py) is >= 90% in every learned row, refuted when an upper
    end is < 90%, otherwise inconclusive; not run without such a row."""
    fair = ev.fair()
    rows = fair[(fair["method"] == "lora") & (fair["task"] == "classify")] if not fair.empty else fair
    if rows.empty:
        v.missing = "fair LoRA rows on classify (make sweep TASK=fair-classify)"
        return v
    return threshold_rule(v, ev, rows, 90.0)
