"""Analyses that read finished run folders (`<runs>/<run_id>/result.json` and what the run saved)."""
