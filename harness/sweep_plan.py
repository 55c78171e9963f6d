"""The learning-rate search's plan, without Hydra: which runs phase 1 (the search) and phase 2 (the seeds at
the selected rate) launch, and the role each run's record carries (`lr_protocol`). The sweeper
(harness/sweeper.py) composes configs and launches; everything here takes a `compose(overrides) -> cfg`.

Two protocols:

- *two-phase* (default): the search runs on each variant's first reporting seed (seed 0), which is then also a
  reporting seed: its test score carries selection optimism (analysis/choices.py reporting_seeds).
- *held-out selection seed* (`selection_seed: 100` in a sweep file): the search runs on a seed of its own, and
  every reporting seed (`seeds: 5` -> 0..4) runs at the selected rate. Records say which role a run had:
  `selection-seed-search` or `selection-seed-report`; the analysis leaves the search runs out of reported means.
"""

from __future__ import annotations

import logging
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any, Callable

from harness.errors import ConfigError
from harness.results import DONE_STATUSES, Status
from harness.runfolder import read_record
from harness.selection import at_grid_edge, lr_candidates, select_lr

log = logging.getLogger(__name__)

# lr_protocol values: the role a run had in its sweep's learning-rate search
TWO_PHASE_SEARCH, TWO_PHASE_SEEDS = "two-phase-search", "two-phase-seeds"
SELECTION_SEED_SEARCH, SELECTION_SEED_REPORT = "selection-seed-search", "selection-seed-report"
SEARCH_PROTOCOLS = (TWO_PHASE_SEARCH, SELECTION_SEED_SEARCH)

Compose = Callable[[list[str]], Any]


def seed_of(overrides: list[str]) -> int:
    return next((int(o.split("=", 1)[1]) for o in overrides if o.startswith("seed=")), 0)

def _variant_key(overrides: list[str]) -> tuple[str, ...]:
    return tuple(o for o in overrides if not o.startswith("seed="))


@dataclass
class SearchVariant:
    """One variant of an lr_search sweep: its first seed's grid point, the rates searched on it, the other seeds."""

    key: tuple[str, ...]
    first: list[str]
    cfg: Any
    rates: list[float]
    waiting: list[list[str]]
    widened: int = 0
    protocol: str = TWO_PHASE_SEARCH  # the search runs' role; SELECTION_SEED_SEARCH on a held-out seed

    def rank(self) -> int | None:
        return self.cfg.r if self.cfg.method.get("has_rank") else None

    def candidates(self, n: int) -> list[float]:
        """The method's `n` grid rates centred on its default, at this variant's rank."""
        return lr_candidates(self.cfg.method, self.rank(), n, self.default_lr())

    def grid(self) -> list[float]:
        return self.candidates(len(self.cfg.method.lr_grid["values"]))

    def default_lr(self) -> float:
        return float(self.cfg.train.lr if self.cfg.train.lr is not None else self.cfg.method.lr)

    def search_overrides(self) -> list[list[str]]:
        return [[*self.first, f"train.lr={lr}", f"lr_protocol={self.protocol}"] for lr in self.rates]

    def points(self, runs: list[dict[str, Any]]) -> tuple[list[tuple[float, int, float]], list[float]]:
        """(lr, seed, val) of this variant's usable search runs, and every rate tried (collapsed ones too)."""
        usable, tried = [], []
        for row in runs:
            if _variant_key(_without_search(row["overrides"])) != self.key:
                continue
            result = read_record(row["run_dir"]) or {}
            if result.get("status") in DONE_STATUSES:
                tried.append(float(row["cfg"].train.lr))
            if result.get("status") == Status.OK.value:
                usable.append((float(row["cfg"].train.lr), int(row["cfg"].seed), result.get("val_score")))
        return usable, tried

    def widen(self, runs: list[dict[str, Any]], limit: int) -> bool:
        """When the best usable rate is the largest (smallest) of those tried, add the next grid rate above
        (below) it, up to `limit` extra rates per variant. Returns whether a rate was added."""
        if self.widened >= limit:
            return False
        usable, tried = self.points(runs)
        chosen = select_lr(usable)[0]
        if chosen is None or not at_grid_edge(chosen, tried):
            return False
        grid = self.grid()
        above = [lr for lr in grid if lr > max(tried)] if chosen == max(tried) else []
        below = [lr for lr in grid if lr < min(tried)] if chosen == min(tried) else []
        step = above[:1] or below[-1:]
        if not step:
            return False
        log.info("sweep: %s is best at %g, the edge of %s: widening to %g", " ".join(self.key) or "(default)",
                 chosen, ",".join(f"{x:g}" for x in sorted(tried)), step[0])
        self.rates.append(step[0])
        self.widened += 1
        return True


def _without_search(overrides: list[str]) -> list[str]:
    return [o for o in overrides if not o.startswith(("train.lr=", "lr_protocol="))]


def search_variants(grid: list[list[str]], n: int, compose: Compose,
                    selection_seed: int | None = None) -> list[SearchVariant]:
    """Phase 1's plan: each variant's first seed at the `n` rates of its method's grid centred on its default;
    its other seeds wait for the selected rate. With `selection_seed` the search runs on that seed instead, and
    every seed of the grid (all reporting seeds) waits for the selected rate."""
    by_variant: OrderedDict[tuple[str, ...], list[tuple[int, list[str], Any]]] = OrderedDict()
    for overrides in grid:
        cfg = compose(overrides)
        by_variant.setdefault(_variant_key(overrides), []).append((int(cfg.seed), overrides, cfg))
    variants = []
    for key, points in by_variant.items():
        points.sort(key=lambda p: p[0])
        if selection_seed is None:
            _, first, cfg = points[0]
            variant = SearchVariant(key, first, cfg, [], [overrides for _, overrides, _ in points[1:]])
        else:
            if any(seed == selection_seed for seed, _, _ in points):
                raise ConfigError(f"selection_seed={selection_seed} is also a reporting seed of the grid; pick a "
                                  f"seed outside it (e.g. selection_seed=100 with seeds=5 -> 0..4)")
            first = [o for o in points[0][1] if not o.startswith("seed=")] + [f"seed={selection_seed}"]
            variant = SearchVariant(key, first, compose(first), [], [overrides for _, overrides, _ in points],
                                    protocol=SELECTION_SEED_SEARCH)
        variant.rates = variant.candidates(n)
        variants.append(variant)
    return variants


def seeds_at_selected_rates(variants: list[SearchVariant], searched: list[dict[str, Any]]) -> list[list[str]]:
    """Phase 2: every waiting grid point (the other seeds; every reporting seed with a held-out selection seed) at its variant's selected rate (best validation score of the search;
    ties: the smaller rate). A variant none of whose search runs finished usable gets no phase 2."""
    second: list[list[str]] = []
    for variant in variants:
        chosen, means, _ = select_lr(variant.points(searched)[0])
        if chosen is None:
            if variant.waiting:
                log.warning("sweep: no usable search run for %s; its other seeds are not run", " ".join(variant.key))
            continue
        log.info("sweep: %s -> train.lr=%g (validation %s)", " ".join(variant.key) or "(default)", chosen,
                 ", ".join(f"{lr:g}: {m:.4f}" for lr, m in means.items()))
        role = SELECTION_SEED_REPORT if variant.protocol == SELECTION_SEED_SEARCH else TWO_PHASE_SEEDS
        second += [[*overrides, f"train.lr={chosen}", f"lr_protocol={role}"] for overrides in variant.waiting]
    return second
