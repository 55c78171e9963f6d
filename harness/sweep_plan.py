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
import math
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Any, Callable

from harness.config import resumable
from harness.errors import ConfigError
from harness.halving import (Rung, RungOutcome, plan_rungs, survivor_counts, survivors, tied_across_cut,
                             total_cost)
from harness.results import DONE_STATUSES, Status
from harness.runfolder import read_record
from harness.selection import at_grid_edge, lr_candidates, select_lr

log = logging.getLogger(__name__)

# ---- the sweep's own settings: the `sweep:` block of a sweep file (conf/config.yaml lists them) ----

SWEEP_KEYS = ("seeds", "lr_search", "lr_widen", "selection_seed", "lr_halving", "lr_halving_rungs",
              "lr_halving_final_margin", "report_eval_every", "variants", "stages")
_NOTED: set[str] = set()  # legacy keys already noted in this process


def moved_sweep_arguments(arguments: list[str]) -> list[str]:
    """Command lines written before the settings moved under `sweep:` keep working: `seeds=3` -> `sweep.seeds=3`
    (with a one-line note naming the new key)."""
    out = []
    for arg in arguments:
        key = arg.split("=", 1)[0]
        if "=" in arg and key in SWEEP_KEYS:
            log.warning("`%s=` is now `sweep.%s=`; read as %s", key, key, f"sweep.{arg}")
            arg = f"sweep.{arg}"
        out.append(arg)
    return out


def sweep_settings(cfg: Any) -> dict[str, Any]:
    """The sweep's settings (`sweep:` in the sweep file; defaults in conf/config.yaml) as a plain dict. A sweep
    file from before the move, with `seeds: 3` at the top level, is read the same way, with a note per key."""
    from omegaconf import DictConfig, OmegaConf

    def plain(value: Any) -> Any:
        return OmegaConf.to_container(value, resolve=True) if isinstance(value, DictConfig) or \
            OmegaConf.is_list(value) else value

    block = {k: plain(v) for k, v in (cfg.get("sweep") or {}).items()}
    for key in SWEEP_KEYS:
        if cfg.get(key) is not None:
            if key not in _NOTED:
                _NOTED.add(key)
                log.warning("sweep file: top-level `%s` is now `sweep.%s`; read as such (move it under `sweep:`)", key,
                            key)
            block[key] = plain(cfg.get(key))
    return {key: block.get(key) for key in SWEEP_KEYS}


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
    return [o for o in overrides if not o.startswith(("train.lr=", "lr_protocol=", "rung_step="))]


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
                raise ConfigError(f"sweep.selection_seed={selection_seed} is also a reporting seed of the grid; pick a "
                                  f"seed outside it (e.g. sweep.selection_seed=100 with sweep.seeds=5 -> 0..4)")
            first = [o for o in points[0][1] if not o.startswith("seed=")] + [f"seed={selection_seed}"]
            variant = SearchVariant(key, first, compose(first), [], [overrides for _, overrides, _ in points],
                                    protocol=SELECTION_SEED_SEARCH)
        variant.rates = variant.candidates(n)
        variants.append(variant)
    return variants


def seeds_at_selected_rates(variants: list[SearchVariant], searched: list[dict[str, Any]],
                            report_eval_every: int | None = None) -> list[list[str]]:
    """Phase 2: every waiting grid point (the other seeds; every reporting seed with a held-out selection seed) at
    its variant's selected rate (best validation score of the search; ties: the smaller rate). A variant none of
    whose search runs finished usable gets no phase 2. `report_eval_every` (sweep.report_eval_every) scores these
    runs' validation curve every that many steps instead of the sweep's own: the search's rungs need a dense
    curve, a reporting run only the convergence rule's tail (harness/budget.py; the last step is always scored)."""
    every = [f"train.eval_every={int(report_eval_every)}"] if report_eval_every else []
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
        second += [[*overrides, f"train.lr={chosen}", f"lr_protocol={role}", *every] for overrides in variant.waiting]
    return second


# ---- successive halving of a variant's search (lr_halving; harness/halving.py plans the rungs) ----

def val_at_step(record: dict[str, Any] | None, step: int) -> float:
    """A search run's validation score at `step` (its `val_curve` point there); NaN when it has none (a failed
    or diverged run), so it ranks last."""
    for point in (record or {}).get("val_curve") or []:
        if int(point.get("step", -1)) == step and point.get("val_score") is not None:
            return float(point["val_score"])
    return math.nan


def paused_at_or_after(record: dict[str, Any] | None, step: int) -> bool:
    """Whether a run already stands at this rung (paused there or later): relaunching it would train past it."""
    return bool(record) and record.get("status") == Status.PAUSED.value and int(record.get("rung_step") or 0) >= step


@dataclass
class HalvingSearch:
    """One variant's successive halving: every rate starts a full-budget run on the search seed; at each rung
    the best `rung.n_keep` continue from their checkpoints; the last one trains to the end of the budget."""

    variant: SearchVariant
    rungs: list[Rung]
    final_margin: float = 0.0  # sweep.lr_halving_final_margin: near ties at the last rung all run to the budget
    alive: list[float] = field(default_factory=list)
    outcomes: list[RungOutcome] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.alive = self.alive or sorted(self.variant.rates)

    def overrides(self, step: int | None) -> list[list[str]]:
        """The alive rates' search runs, stopping at `step` (None: the end of the budget)."""
        return [[*self.variant.first, f"train.lr={lr}", f"lr_protocol={self.variant.protocol}",
                 f"rung_step={'null' if step is None else step}"] for lr in self.alive]

    def cut(self, rung: Rung, records: dict[float, dict[str, Any] | None]) -> RungOutcome:
        """Rank the alive rates on their validation score at the rung; keep the best (ties are reported)."""
        scores = {lr: val_at_step(records.get(lr), rung.step) for lr in self.alive}
        outcome = RungOutcome(rung, scores, survivors(rung, scores, self.final_margin), tied_across_cut(rung, scores))
        name = " ".join(self.variant.key) or "(default)"
        log.info("sweep: halving %s at step %d: %s -> keeps %s", name, rung.step,
                 ", ".join(f"{lr:g}: {v:.4f}" for lr, v in sorted(scores.items())), ",".join(f"{x:g}" for x in outcome.kept))
        if len(outcome.kept) > rung.n_keep:
            log.info("sweep: halving %s at step %d: %d rates within %g of the leader all run to the budget; the "
                     "final validation score selects", name, rung.step, len(outcome.kept), self.final_margin)
        if outcome.tie:
            log.warning("sweep: halving %s at step %d: rates %s tie across the cut (kept the smaller)", name,
                        rung.step, ",".join(f"{x:g}" for x in outcome.tie))
        self.outcomes.append(outcome)
        self.alive = outcome.kept
        return outcome

    def summary(self, budget_steps: int) -> dict[str, Any]:
        return {"variant": " ".join(self.variant.key), "rates": sorted(self.variant.rates), "budget_steps": budget_steps,
                "cost_full_runs": total_cost(self.rungs, budget_steps, len(self.variant.rates)),
                "rungs": [{"step": o.rung.step, "scores": {f"{k:g}": v for k, v in o.scores.items()},
                           "kept": o.kept, "tied_across_cut": o.tie} for o in self.outcomes],
                "full_length": not self.rungs,  # no rungs: every rate ran the budget, phase 2 selects as usual
                "final_margin": self.final_margin,
                # several finalists (full length, or near ties kept by final_margin): phase 2 selects on their
                # final validation score and logs it; the sweep's summary holds the selected rate
                "finalists": sorted(self.alive),
                "selected": self.alive[0] if len(self.alive) == 1 else None}


def final_margin(settings: dict[str, Any]) -> float:
    """`sweep.lr_halving_final_margin` as a number >= 0 (null: 0, plain halving); anything else is refused."""
    value = settings.get("lr_halving_final_margin")
    if value is None:
        return 0.0
    try:
        margin = float(value)
    except (TypeError, ValueError):
        margin = math.nan
    if not margin >= 0:
        raise ConfigError(f"sweep.lr_halving_final_margin={value!r}: give a score difference >= 0 (e.g. 0.04 for "
                          f"accuracy on 300 validation items), or null for plain halving")
    return margin


def halving_rungs(variant: SearchVariant, budget_steps: int, eval_every: int,
                  explicit: list[int] | None = None) -> list[Rung]:
    """The variant's rungs at the steps its validation curve is scored (every `eval_every` steps and the last):
    planned by harness/halving.py, or at `explicit` steps (`lr_halving_rungs`, one per halving). None for a
    method whose runs cannot pause and resume (`resumable: false`, AdaLoRA): its rates all run the full budget,
    and the best final validation score is selected, as without halving."""
    if not resumable(variant.cfg.method):
        log.info("sweep: %s cannot resume from a checkpoint: its %d rates run the full budget (no halving rungs)",
                 " ".join(variant.key) or "(default)", len(variant.rates))
        return []
    if not eval_every:
        raise ConfigError("lr_halving compares rates on the validation curve: set train.eval_every (e.g. "
                          "train.eval_every=50) so validation is scored before the budget ends")
    scored = sorted({*range(eval_every, budget_steps + 1, eval_every), budget_steps})
    if explicit:
        counts = survivor_counts(len(variant.rates))
        steps = [int(s) for s in explicit]
        if len(steps) != len(counts) or steps != sorted(set(steps)) or not set(steps) <= set(scored) \
                or steps[-1] >= budget_steps:
            raise ConfigError(f"lr_halving_rungs={steps}: {len(variant.rates)} rates need {len(counts)} increasing "
                              f"rung steps where validation is scored (multiples of train.eval_every={eval_every}) "
                              f"before the budget's {budget_steps} steps")
        n_in = [len(variant.rates), *counts[:-1]]
        return [Rung(step, n, keep) for step, n, keep in zip(steps, n_in, counts)]
    try:
        return plan_rungs(len(variant.rates), budget_steps, eval_steps=scored)
    except ValueError as err:
        raise ConfigError(f"lr_halving: {err}") from err
