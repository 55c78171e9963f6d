"""The claims ledger, one module per concern:

- `report`: gather a study's evidence, apply the rules, write the ledger, REPORT.md and W&B tables
  (`python -m analysis.claims`, this package's `__main__`);
- `rules` (the registry and claims 1-9), `rules_costs` (10-15), `rules_2025` (16-18) and `rules_2025_tradeoffs`
  (19-21, with `rows_2025`, `stats_2025` and `plots_2025`): each claim's decision rule;
- `verdicts`: the verdict and evidence types and the labels; `findings`: FINDINGS.md and the README block;
- `memory` (claim 14's workload and frontier) and `latency` (claim 12's paired rounds).
"""
