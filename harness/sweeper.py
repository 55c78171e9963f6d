"""Hydra sweeper for the harness: the basic grid, minus runs that are the same effective run, minus runs
already finished `ok`; a summary table of every run of the grid at the end.

It replaces Hydra's basic sweeper through `hydra.sweeper._target_` (conf/hydra/default.yaml), so every Hydra
launcher (basic, joblib, submitit local / SLURM) runs its jobs unchanged.

    make sweep TASK=style ARGS="train.max_steps=20 sweep.seeds=2"
    make sweep TASK=style ARGS="sweep.lr_search=3 sweep.seeds=3"     # two-phase: 3 rates on seed 0, seeds 1-2 at the best

With `sweep.lr_search=N` the sweep runs in two phases within one command: each variant's first seed at N rates of
its method's grid (harness/selection.py), then its other seeds at the rate with the best validation score:
N + S - 1 runs per variant instead of N x S. With `sweep.lr_widen=K`, a variant whose best search rate is at an end of
the rates tried gets the next grid rate beyond it, up to K more. Both phases skip what is already done, so an
interrupted sweep resumes where it stopped; records say which phase ran them (`lr_protocol`). With
`selection_seed: 100` the search runs on that seed alone and every reporting seed runs at the selected rate, so
no reported seed took part in the choice (N + S runs per variant). With `lr_halving: true` the search is
successive halving (harness/halving.py): every rate starts, runs stop at rungs with a checkpoint (`paused`), the
best half resume, one trains to the end: about two full-budget runs for up to 7 rates. A method that cannot
resume (AdaLoRA) runs every rate to the end instead, and only such a variant widens (`lr_widen`). The plan itself:
harness/sweep_plan.py.
A sweep started from a git tree with uncommitted changes warns loudly (`warn_if_dirty`).

With `stages: [[task=classify], [task=extract], ...]` (sweeps/study/continual.yaml) every grid point runs the stages
one after another, each starting from the previous stage's run (`init_from`, harness/lineage.py).
"""

from __future__ import annotations

import logging
import socket
from collections import OrderedDict
from pathlib import Path
from typing import Any, Sequence

import pandas as pd
import psutil
from hydra._internal.core_plugins.basic_sweeper import BasicSweeper
from hydra.core.override_parser.overrides_parser import OverridesParser

from harness.config import resolve
from harness.errors import ConfigError
from harness.provenance import warn_if_dirty
from harness.sweep_plan import (HalvingSearch, SearchVariant, final_margin, halving_rungs,  # noqa: F401
                                 paused_at_or_after, search_variants, seed_of, seeds_at_selected_rates, sweep_settings)
from harness.sweep_progress import progress_batch_size, sweep_progress, wall_time_estimate
from harness.results import (RESULT_FILE, Status, is_done, now, rejected_before,
                             write_json_atomic)
from harness.runfolder import read_record

log = logging.getLogger(__name__)
SUMMARY_COLUMNS = ["run_id", "status", "score", "base_score", "peak_mem_bytes", "train_tokens_per_s", "reason"]


def check_one_run_per_gpu(launcher: Any) -> None:
    """The joblib launcher runs n_jobs runs at once on this machine, each in its own process; it divides the CPU
    between them (joblib sets OMP_NUM_THREADS = cores // n_jobs in its workers, `torch_threads` in the record),
    but on CUDA every one of them would load its model on the same GPU. Refused in one line before any run."""
    import torch

    if "joblib" not in str(launcher.get("_target_", "")) or not torch.cuda.is_available():
        return
    n_jobs = launcher.get("n_jobs")
    if n_jobs is None or n_jobs == -1 or int(n_jobs) > 1:
        raise ConfigError(f"hydra/launcher=joblib with n_jobs={n_jobs} would put several runs on one GPU at once; "
                          "set hydra.launcher.n_jobs=1, or use hydra/launcher=submitit_slurm (one GPU per job)")


def _with_seed_range(arguments: list[str]) -> list[str]:
    """`sweep.seeds=N` on the command line means seed=0..N-1 for every grid point."""
    seeds = [a for a in arguments if a.startswith("sweep.seeds=")]
    if not seeds:
        return arguments
    n = int(seeds[-1].split("=", 1)[1])
    return [a for a in arguments if not a.startswith(("seed=", "sweep.seeds="))] + [f"seed=range(0,{n})"]


class HarnessSweeper(BasicSweeper):
    """Hydra's basic sweeper (its private `BasicSweeper`, subclassed for its override parsing and launcher
    batching) with the harness's plan (harness/sweep_plan.py, no Hydra there). `hydra.sweeper.params`: the
    Cartesian axes, as in Hydra's basic sweeper. The sweep file's `sweep.variants`: an optional list of override lists, e.g. `[[method=full], [method=lora, r=8]]`, each crossed with
    the axes, for grids that are not a product (LoRA at two ranks beside full FT, which has none). A variant's own
    sweep (`[method=full, "train.lr=1e-5,2e-5,4e-5"]`) expands into one variant per value: each method its own rates."""

    def __init__(self, max_batch_size: int | None = None, params: dict[str, str] | None = None) -> None:
        super().__init__(max_batch_size=max_batch_size, params=params)

    def grid(self, arguments: list[str]) -> list[list[str]]:
        """Every grid point's overrides: the sweep file's axes, then the command line's (`sweep.seeds=N` expanded)."""
        params = self._parse_config() + list(arguments)
        settings = sweep_settings(self.config)
        if not any(a.startswith(("sweep.seeds=", "seed=")) for a in params) and int(settings["seeds"] or 1) > 1:
            params.append(f"sweep.seeds={int(settings['seeds'])}")  # a sweep file's own `sweep: {seeds: N}`
        if any(a.startswith("sweep.seeds=") for a in params):
            params = [p for p in params if not p.startswith("seed=")]
            params = _with_seed_range(params)
        parser = OverridesParser.create(config_loader=self.hydra_context.config_loader)
        points = [list(o) for o in self.split_arguments(parser.parse_overrides(params), None)[0]]
        # a variant may sweep its own keys (`train.lr=1e-4,2e-4`: a rate list per method): one variant per value
        variants = [expanded for v in settings["variants"] or []
                    for expanded in self.split_arguments(parser.parse_overrides(list(v)), None)[0]]
        if variants:  # a variant's own keys win over the same key on an axis (e.g. the axes' default method)
            points = [[o for o in point if o.split("=", 1)[0] not in {v.split("=", 1)[0] for v in variant}] + variant
                      for variant in variants for point in points]
        # seed-major: every grid point at the first seed before any at the next, so an interrupted sweep has the
        # whole grid at fewer seeds rather than part of it at all seeds
        return sorted(points, key=seed_of)

    def plan(self, arguments: list[str], grid: list[list[str]] | None = None
             ) -> tuple[list[list[str]], list[dict[str, Any]]]:
        """(jobs to launch, one row per distinct run of the grid with its current status)."""
        distinct: OrderedDict[str, dict[str, Any]] = OrderedDict()
        for overrides in self.grid(arguments) if grid is None else grid:
            cfg = self.hydra_context.config_loader.load_sweep_config(self.config, list(overrides))
            spec = resolve(cfg)
            rid = spec.run_id
            if rid in distinct:
                distinct[rid]["duplicates"] += 1
                continue
            run_dir = Path(cfg.paths.runs) / rid
            mark_if_killed(run_dir)
            previous = read_record(run_dir)
            digest = spec.config_hash
            done = (is_done(previous, digest) or rejected_before(previous, digest)) and not cfg.rerun
            distinct[rid] = {"run_id": rid, "overrides": list(overrides), "run_dir": run_dir, "done": done,
                             "duplicates": 0, "cfg": cfg}
        todo = [row["overrides"] for row in distinct.values() if not row["done"]]
        return todo, list(distinct.values())

    def launch(self, todo: list[list[str]], start_idx: int = 0) -> list[Any]:
        returns = []
        batch_size = self.max_batch_size or progress_batch_size(self.config.hydra.launcher, len(todo))
        with sweep_progress(len(todo)) as progress:
            for start in range(0, len(todo), batch_size):
                batch: Sequence[Sequence[str]] = todo[start:start + batch_size]
                self.validate_batch_is_legal(batch)
                log.info("sweep: launching runs %d-%d of %d", start + 1, start + len(batch), len(todo))
                returns.append(self.launcher.launch(batch, initial_job_idx=start_idx + start))
                progress(len(batch))
        return returns

    def sweep(self, arguments: list[str]) -> Any:
        check_one_run_per_gpu(self.config.hydra.launcher)
        warn_if_dirty(f"sweep '{self.config.get('group') or 'sweep'}'")  # a record of a dirty tree needs its diff
        grid = self.grid(arguments)
        lr_search = self.lr_search(grid)
        settings = sweep_settings(self.config)
        sweep_dir = Path(self.config.hydra.sweep.dir)
        sweep_dir.mkdir(parents=True, exist_ok=True)
        runs: list[dict[str, Any]] = []
        returns: list[Any] = []
        stages = [list(stage) for stage in settings["stages"] or []]
        if stages and lr_search:
            raise ConfigError("a sweep with stages cannot also search learning rates (lr_search); give each "
                              "variant its rate (train.lr in variants) or search on the first stage alone")
        try:
            if stages:
                returns += self.sweep_stages(arguments, grid, stages, runs)
            elif lr_search:
                selection_seed = settings["selection_seed"]
                variants = search_variants(grid, lr_search, self._compose,
                                           None if selection_seed is None else int(selection_seed))
                widen, launched = int(settings["lr_widen"] or 0), 0
                on = "the first seed" if selection_seed is None else f"selection seed {int(selection_seed)}"
                if settings["lr_halving"]:
                    launched = self.halving(arguments, variants, runs, returns, sweep_dir, on)
                while not settings["lr_halving"]:
                    todo, runs = self.plan(arguments, [o for v in variants for o in v.search_overrides()])
                    self._log_plan(f"phase 1 (learning-rate search on {on})", runs, todo)
                    returns += self.launch(todo, start_idx=launched)
                    launched += len(todo)
                    if not any([v.widen(runs, widen) for v in variants]):  # every variant, not the first only
                        break
                second = seeds_at_selected_rates(variants, runs, settings["report_eval_every"])
                todo2, runs2 = self.plan(arguments, second)
                seeds = "the other seeds" if selection_seed is None else "every reporting seed"
                self._log_plan(f"phase 2 ({seeds} at each variant's selected rate)", runs2, todo2)
                runs += runs2
                returns += self.launch(todo2, start_idx=launched)
            else:
                todo, runs = self.plan(arguments, grid)
                self._log_plan("grid", runs, todo)
                returns += self.launch(todo)
        finally:  # also when a worker was killed and the launcher gave up: every record tells the truth
            for row in runs:
                mark_if_killed(row["run_dir"])
            self.report(runs, sweep_dir)
        return returns

    def halving(self, arguments: list[str], variants: list[SearchVariant], runs: list[dict[str, Any]],
                returns: list[Any], sweep_dir: Path, on: str) -> int:
        """Phase 1 by successive halving (harness/halving.py): every variant's rates start on the search seed and
        stop at the first rung (status `paused`, a checkpoint kept); the best half resume to the next rung, until
        one trains to the end of the budget (`ok`, the selected rate). Appends every search run's row to `runs`
        (latest state per run); writes halving-<group>.json (scores, survivors, ties, cost). Returns runs launched."""
        settings = sweep_settings(self.config)
        explicit = list(settings["lr_halving_rungs"] or [])
        margin = final_margin(settings)
        searches = [HalvingSearch(v, halving_rungs(v, budget_steps(v.cfg), int(v.cfg.train.eval_every or 0), explicit),
                                  margin) for v in variants]
        launched, rows_by_id = 0, OrderedDict()
        for level in range(max(len(h.rungs) for h in searches) + 1):
            batch = [(h, h.rungs[level] if level < len(h.rungs) else None) for h in searches if level <= len(h.rungs)]
            points = [o for h, rung in batch for o in h.overrides(rung.step if rung else None)]
            _, rows = self.plan(arguments, points)
            todo = [r["overrides"] for r in rows if not r["done"] and not _stands_at(r)]
            where = "to the end of the budget" if all(r is None for _, r in batch) else f"rung {level + 1}"
            self._log_plan(f"phase 1 (successive halving on {on}, {where})", rows, todo)
            returns += self.launch(todo, start_idx=launched)
            launched += len(todo)
            rows_by_id.update((r["run_id"], r) for r in rows)
            for h, rung in batch:
                if rung is not None:
                    h.cut(rung, {float(r["cfg"].train.lr): read_record(r["run_dir"]) for r in rows
                                 if _variant_key_of(r) == h.variant.key})
        launched += self._widen_full_length(arguments, searches, rows_by_id, int(settings["lr_widen"] or 0),
                                            returns, launched)
        runs += rows_by_id.values()
        name = self.config.get("group") or "sweep"
        write_json_atomic(sweep_dir / f"halving-{name}.json",
                          [h.summary(budget_steps(h.variant.cfg)) for h in searches])
        return launched

    def _widen_full_length(self, arguments: list[str], searches: list[HalvingSearch], rows_by_id: OrderedDict,
                           widen: int, returns: list[Any], launched: int) -> int:
        """`lr_widen` under halving: a variant searched without rungs (its method cannot resume) ran every rate to
        the full budget, so its grid widens as in a plain search while its best rate sits at an edge. A halved
        variant's rates were fixed before its rungs: they never widen, and a warning says so."""
        if widen and any(h.rungs for h in searches):
            log.warning("sweep: lr_widen applies only to the variants searched at full length (methods that "
                        "cannot resume); a halved variant's rates are fixed before its rungs")
        full, added = [h for h in searches if not h.rungs], 0
        while widen and full:
            grown = [h for h in full if h.variant.widen(list(rows_by_id.values()), widen)]
            if not grown:
                break
            for h in grown:
                h.alive = sorted(h.variant.rates)
            _, rows = self.plan(arguments, [o for h in grown for o in h.overrides(None)])
            todo = [r["overrides"] for r in rows if not r["done"]]
            self._log_plan("phase 1 (widening the full-length searches)", rows, todo)
            returns += self.launch(todo, start_idx=launched + added)
            added += len(todo)
            rows_by_id.update((r["run_id"], r) for r in rows)
        return added

    def sweep_stages(self, arguments: list[str], grid: list[list[str]], stages: list[list[str]],
                     runs: list[dict[str, Any]]) -> list[Any]:
        """Continual learning: every grid point runs the stages in order, stage k starting from the same point's
        stage k-1 run (`init_from`, harness/lineage.py). A point whose stage did not finish ok stops there.
        Appends each stage's rows to `runs`; returns the launcher's results."""
        returns: list[Any] = []
        launched = 0
        parents: dict[int, Path] = {}  # grid point -> its previous stage's run folder
        for k, stage in enumerate(stages, 1):
            keys = {o.split("=", 1)[0] for o in stage}
            index = [i for i in range(len(grid)) if k == 1 or i in parents]
            points = [[o for o in grid[i] if o.split("=", 1)[0] not in keys] + stage
                      + ([f"init_from={parents[i]}"] if k > 1 else []) for i in index]
            todo, rows = self.plan(arguments, points)
            self._log_plan(f"stage {k} of {len(stages)} ({' '.join(stage)})", rows, todo)
            runs += rows
            returns += self.launch(todo, start_idx=launched)
            launched += len(todo)
            parents = {}
            for i, point in zip(index, points):
                cfg = self._compose(point)
                run_dir = (Path(cfg.paths.runs) / resolve(cfg).run_id).resolve()
                if (read_record(run_dir) or {}).get("status") == Status.OK.value:
                    parents[i] = run_dir
                else:
                    log.warning("sweep: %s did not finish ok; its later stages are not run", run_dir.name)
        return returns

    def _compose(self, overrides: list[str]):
        return self.hydra_context.config_loader.load_sweep_config(self.config, list(overrides))

    def lr_search(self, grid: list[list[str]]) -> int:
        """`sweep.lr_search=N` (N > 1 = search), unless the grid has its own `train.lr` axis, which wins."""
        if not grid:
            return 0
        n = int(sweep_settings(self._compose(grid[0]))["lr_search"] or 0)
        if n and any(o.startswith("train.lr=") for o in grid[0]):
            log.warning("sweep: an explicit train.lr axis is given, so sweep.lr_search=%d is not applied", n)
            return 0
        return n

    @staticmethod
    def _log_plan(phase: str, runs: list[dict[str, Any]], todo: list[list[str]]) -> None:
        merged = sum(r["duplicates"] for r in runs)
        done = [(read_record(r["run_dir"]) or {}).get("status") for r in runs if r["done"]]
        collapsed, invalid = done.count(Status.COLLAPSED.value), done.count(Status.INVALID.value)
        skipped = (f" and {collapsed} collapsed (not retried)" if collapsed else "") + \
            (f" and {invalid} invalid under the same config and code (not retried; rerun=true retries)" if invalid else "")
        log.info("sweep %s: %d grid points -> %d distinct runs (%d equivalent merged), %d already ok%s, %d to run",
                 phase, len(runs) + merged, len(runs), merged, len(done) - collapsed - invalid, skipped, len(todo))
        if todo:
            log.info("sweep %s: %s", phase.split(" (")[0], wall_time_estimate(runs, len(todo)))

    def report(self, runs: list[dict[str, Any]], sweep_dir: Path) -> None:
        table = summary_table([r["run_dir"] for r in runs])
        name = self.config.get("group") or "sweep"
        table.to_csv(sweep_dir / f"sweep-{name}.csv", index=False)
        print(f"\nsweep '{name}': {len(table)} runs, " + ", ".join(f"{n} {s}" for s, n in table["status"].value_counts().items()))
        print(table.drop(columns=["reason"]).to_string(index=False), flush=True)


def _variant_key_of(row: dict[str, Any]) -> tuple[str, ...]:
    return tuple(o for o in row["overrides"] if not o.startswith(("seed=", "train.lr=", "lr_protocol=", "rung_step=")))


def _stands_at(row: dict[str, Any]) -> bool:
    """A halving run already paused at (or past) the rung its overrides ask for: not relaunched."""
    step = next((o.split("=", 1)[1] for o in row["overrides"] if o.startswith("rung_step=")), "null")
    return step != "null" and paused_at_or_after(read_record(row["run_dir"]), int(step))


def budget_steps(cfg: Any) -> int:
    """A run's planned optimizer steps (its budget), as the run itself will count them."""
    if cfg.train.get("max_steps"):
        return int(cfg.train.max_steps)
    from harness.assets import cache_dir
    from harness.tasks import get_task
    from harness.training_budget import planned_steps

    return planned_steps(cfg.train, len(get_task(cfg.task, cache_dir(cfg.paths.cache)).splits()["train"]))


def mark_if_killed(run_dir: Path) -> None:
    """A record still saying `running` whose process is gone (SIGKILL, a dead worker) becomes `interrupted`."""
    result = read_record(run_dir)
    if not result or result.get("status") != Status.RUNNING or result.get("host") != socket.gethostname():
        return
    if result.get("pid") and not psutil.pid_exists(result["pid"]):
        write_json_atomic(Path(run_dir) / RESULT_FILE, result | {
            "status": Status.INTERRUPTED.value, "finished_at": now(),
            "reason": f"killed: its process (pid {result['pid']}) ended without finishing"})


def summary_table(run_dirs: list[Path]) -> pd.DataFrame:
    """One row per run folder: status, score, peak memory (GB), tokens/s; a missing record reads 'missing'."""
    rows = []
    for run_dir in run_dirs:
        result = read_record(run_dir) or {"run_id": Path(run_dir).name, "status": "missing"}
        rows.append({k: result.get(k) for k in SUMMARY_COLUMNS} | {"run_id": Path(run_dir).name})
    table = pd.DataFrame(rows, columns=SUMMARY_COLUMNS)
    table["peak_mem_gb"] = (table.pop("peak_mem_bytes").astype(float) / 2**30).round(2)
    table["train_tokens_per_s"] = table["train_tokens_per_s"].astype(float).round(0)
    return table
