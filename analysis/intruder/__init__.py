"""Intruder dimensions (arXiv:2410.21228), one module per concern:

- `report`: the analysis of run folders (`python -m analysis.intruder`, this package's `__main__`);
- `weights`: each run's tuned and pre-trained matrices; `svd`: singular vectors, intruder counts, effective rank;
- `tables` and `plots`: the summaries and figures; `scaling`: the causal test (scaling the intruders down);
- `evidence`: what the claims ledger reads from the tables (claim 11).
"""
