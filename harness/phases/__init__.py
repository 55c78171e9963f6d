"""A run's phases, in the order `harness.pipeline.execute` runs them. Each takes the `RunContext`, keeps what later
phases need on it, and returns its part of the record (the keys harness/results.py FIELDS assigns to it)."""

from harness.phases.context import RunContext
from harness.phases.finish import earlier_stages, save, scores
from harness.phases.prepare import load, method, untuned_scores
from harness.phases.tuning import train

PHASES = (("load", load), ("untuned_scores", untuned_scores), ("method", method), ("train", train),
          ("scores", scores), ("earlier_stages", earlier_stages), ("save", save))

__all__ = ["PHASES", "RunContext", "earlier_stages", "load", "method", "save", "scores", "train", "untuned_scores"]
