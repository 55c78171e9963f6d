"""Successive halving of a learning-rate search on the validation curve (Jamieson & Talwalkar 2016; one bracket
of Hyperband, Li et al. 2018), so a search costs about two full-budget runs instead of one per rate.

Protocol: every candidate rate starts a full-budget run (same schedule, same seed). At each rung (a step, a
fraction of the budget) the runs still going are compared on their validation score at that step, and the best
floor(n / eta) of them (at least one) continue, resumed from their checkpoint: a rung is a prefix of the full run,
so the learning-rate schedule is the full budget's throughout. Halving ends when one run is left; it trains on
to the full budget and is the selected rate. Ranking follows harness/selection.py: the higher score, ties to the
smaller rate; a tie across the cut (or for the win) is reported, never hidden.

A near tie at the last rung is not decided there (`final_margin`, the sweep's `lr_halving_final_margin`): every
rate within that many score points of the leader also trains to the full budget, and the best end-of-training
validation score selects, as in a plain search. This is a race's rule (Maron & Moore 1994; F-Race, Birattari et al.
2002): a candidate is dropped only when it is measurably behind. It matters most when the last rung falls early in
a short budget, where scores are still far from their end values (claim 19's all-linear variants: .483/.477/.460 at
step 50 of 150, one binomial standard error of a difference on 300 items being ~0.04).

Rungs sit at fractions first, first * eta, ... of the budget, first = eta ** -ceil(log_eta n): e.g. 7 rates,
eta 2 -> rungs at 1/8 (7 -> 3) and 1/4 (3 -> 1), cost 7/8 + 3/8 + 3/4 = 2.0 full runs. A rung can only sit where
validation is scored (`train.eval_every`): `eval_steps` moves each rung to the first scored step at or after it.

Pure functions, no Hydra: the sweeper decides when to stop and resume runs.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field


@dataclass(frozen=True)
class Rung:
    step: int      # the training step whose validation scores are compared
    n_in: int      # runs trained up to this step
    n_keep: int    # runs that continue past it (1 at the last rung)


def survivor_counts(n_candidates: int, eta: int = 2) -> list[int]:
    """Runs left after each rung: floor(n / eta) each time, at least one, until one is left."""
    counts, n = [], n_candidates
    while n > 1:
        n = max(1, n // eta)
        counts.append(n)
    return counts


def plan_rungs(n_candidates: int, budget_steps: int, eta: int = 2, first_fraction: float | None = None,
               eval_steps: Sequence[int] | None = None) -> list[Rung]:
    """The rungs of a search over `n_candidates` rates with a budget of `budget_steps` (empty for one rate).

    `first_fraction` (default eta ** -ceil(log_eta n)) places the first rung; the next ones are eta times later.
    With `eval_steps` (where validation is scored) each rung moves to the first scored step at or after it and
    after the previous rung; halvings left without a scored step before the budget end at the last one found."""
    if n_candidates < 1 or budget_steps < 1 or eta < 2:
        raise ValueError(f"need n_candidates >= 1, budget_steps >= 1, eta >= 2 (got {n_candidates}, "
                         f"{budget_steps}, {eta})")
    counts = survivor_counts(n_candidates, eta)
    if not counts:
        return []
    first = first_fraction if first_fraction is not None else eta ** -math.ceil(math.log(n_candidates, eta) - 1e-9)
    if not 0 < first <= 1:
        raise ValueError(f"first_fraction must lie in (0, 1], got {first}")
    ideal = [max(1, math.ceil(first * eta ** k * budget_steps)) for k in range(len(counts))]
    if any(s > budget_steps for s in ideal):
        raise ValueError(f"{len(counts)} rungs from {first:g} of the budget by factors of {eta} pass the budget; "
                         f"lower first_fraction")
    scored = sorted({int(s) for s in eval_steps if 0 < s <= budget_steps}) if eval_steps is not None else None
    rungs: list[Rung] = []
    n_in = n_candidates
    for step, keep in zip(ideal, counts):
        if scored is not None:
            after = rungs[-1].step if rungs else 0
            later = [s for s in scored if s >= step and s > after]
            if not later:
                if not rungs:
                    raise ValueError(f"no validation point at or after step {step} (<= {budget_steps}); "
                                     f"set train.eval_every so validation is scored before the budget ends")
                rungs[-1] = Rung(rungs[-1].step, rungs[-1].n_in, keep)  # the remaining halvings happen here
                continue
            step = later[0]
        rungs.append(Rung(step, n_in, keep))
        n_in = keep
    return rungs


def total_cost(rungs: Sequence[Rung], budget_steps: int, n_candidates: int | None = None) -> float:
    """Training steps of the whole search in units of one full-budget run: every run to the first rung, the
    survivors of each rung to the next, the last one to the end of the budget."""
    if not rungs:
        return float(n_candidates or 1)
    steps, previous = 0, 0
    for rung in rungs:
        steps += rung.n_in * (rung.step - previous)
        previous = rung.step
    steps += rungs[-1].n_keep * (budget_steps - previous)
    return steps / budget_steps


def _rank_key(item: tuple[float, float]) -> tuple[float, float]:
    rate, score = item
    return (-score if not math.isnan(score) else math.inf, rate)


def survivors(rung: Rung, scores_by_rate: Mapping[float, float], final_margin: float = 0.0) -> list[float]:
    """The rates that continue past `rung`: the `rung.n_keep` best scores (NaN last), ties to the smaller rate. At
    the last rung (`n_keep` 1) with `final_margin` > 0, also every rate within `final_margin` of the leader's score
    (in rank order): they all train to the full budget and the final validation score selects among them."""
    ranked = sorted(((float(r), float(s)) for r, s in scores_by_rate.items()), key=_rank_key)
    kept = [rate for rate, _ in ranked[:rung.n_keep]]
    if rung.n_keep == 1 and final_margin > 0 and ranked and not math.isnan(ranked[0][1]):
        best = ranked[0][1]
        kept += [rate for rate, score in ranked[1:] if not math.isnan(score) and best - score <= final_margin + 1e-9]
    return kept


def tied_across_cut(rung: Rung, scores_by_rate: Mapping[float, float]) -> list[float]:
    """The rates whose score equals the last survivor's while some of them were cut: [] when the cut is clean."""
    ranked = sorted(((float(r), float(s)) for r, s in scores_by_rate.items()), key=_rank_key)
    if len(ranked) <= rung.n_keep:
        return []
    line = ranked[rung.n_keep - 1][1]
    if ranked[rung.n_keep][1] != line:
        return []
    return sorted(rate for rate, score in ranked if score == line)


@dataclass
class RungOutcome:
    rung: Rung
    scores: dict[float, float]
    kept: list[float]
    tie: list[float] = field(default_factory=list)


@dataclass
class Halving:
    """A simulated (or replayed) search: the selected rate, the rates tied with it, each rung and the cost."""
    chosen: float | None
    tied: list[float]        # the rates tied with the chosen one (at the last rung, or on final scores)
    rungs: list[RungOutcome]
    cost: float


def simulate(curves: Mapping[float, Mapping[int, float]], budget_steps: int, eta: int = 2,
             final_scores: Mapping[float, float] | None = None, first_fraction: float | None = None,
             final_margin: float = 0.0) -> Halving:
    """Successive halving replayed on finished runs: `curves[rate][step]` are validation scores along each
    run; `final_scores[rate]` (the end-of-training validation score, on the whole split) stands in at the
    budget's step. Rungs go where every run has a score. With `final_margin`, the last rung's near ties all run
    to the budget and the best end score (`final_scores`, else the curve's last point) selects; the cost counts
    the extra runs."""
    rates = sorted(float(r) for r in curves)
    if not rates:
        return Halving(None, [], [], 0.0)
    final = {float(r): float(s) for r, s in (final_scores or {}).items()}

    def score(rate: float, step: int) -> float:
        if step == budget_steps and rate in final:
            return final[rate]
        value = curves[rate].get(step, math.nan)
        return float(value) if value is not None else math.nan

    steps = set.intersection(*(set(int(s) for s in curves[r]) for r in rates))
    if final and all(r in final for r in rates):
        steps.add(budget_steps)
    plan = plan_rungs(len(rates), budget_steps, eta, first_fraction, eval_steps=sorted(steps))
    alive, outcomes = rates, []
    for rung in plan:
        scores = {r: score(r, rung.step) for r in alive}
        kept = survivors(rung, scores, final_margin)
        outcomes.append(RungOutcome(rung, scores, kept, tied_across_cut(rung, scores)))
        alive = kept
    cost = total_cost(plan, budget_steps, len(rates))
    if len(alive) > 1:  # near ties at the last rung ran to the budget: the end score selects
        end = {r: score(r, budget_steps) if r in final else _last(curves[r]) for r in alive}
        ranked = sorted(end.items(), key=_rank_key)
        chosen = ranked[0][0]
        cost += (len(alive) - 1) * (budget_steps - plan[-1].step) / budget_steps
        return Halving(chosen, sorted(r for r, s in end.items() if s == end[chosen]), outcomes, cost)
    chosen = alive[0]
    tied = [chosen]
    if outcomes:
        last = outcomes[-1].scores
        tied = sorted(r for r, s in last.items() if s == last[chosen])
    return Halving(chosen, tied, outcomes, cost)


def _last(curve: Mapping[int, float]) -> float:
    """A curve's score at its last step (NaN for an empty curve)."""
    return float(curve[max(curve)]) if curve else math.nan
