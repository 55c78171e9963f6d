"""Hydra sweeper for the harness: the basic grid, minus runs that are the same effective run, minus runs
already finished `ok`; a summary table of every run of the grid at the end.

It replaces Hydra's basic sweeper through `hydra.sweeper._target_` (conf/hydra/default.yaml), so every Hydra
launcher (basic, joblib, submitit local / SLURM) runs its jobs unchanged.

    make sweep TASK=style ARGS="train.max_steps=20 seeds=2"
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

from harness.config import config_hash, effective_config, run_id
from harness.results import RESULT_FILE, Status, now, read_result, write_json_atomic

log = logging.getLogger(__name__)
SUMMARY_COLUMNS = ["run_id", "status", "score", "base_score", "peak_mem_bytes", "train_tokens_per_s", "reason"]


def _with_seed_range(arguments: list[str]) -> list[str]:
    """`seeds=N` on the command line means seed=0..N-1 for every grid point."""
    seeds = [a for a in arguments if a.startswith("seeds=")]
    if not seeds:
        return arguments
    n = int(seeds[-1].split("=", 1)[1])
    return [a for a in arguments if not a.startswith("seed=")] + [f"seed=range(0,{n})"]


class HarnessSweeper(BasicSweeper):
    def __init__(self, max_batch_size: int | None = None, params: dict[str, str] | None = None) -> None:
        super().__init__(max_batch_size=max_batch_size, params=params)

    def plan(self, arguments: list[str]) -> tuple[list[list[str]], list[dict[str, Any]]]:
        """(jobs to launch, one row per distinct run of the grid with its current status)."""
        params = self._parse_config() + list(arguments)
        if any(a.startswith("seeds=") for a in params):
            params = [p for p in params if not p.startswith("seed=")]
            params = _with_seed_range(params)
        parser = OverridesParser.create(config_loader=self.hydra_context.config_loader)
        grid = self.split_arguments(parser.parse_overrides(params), None)[0]
        distinct: OrderedDict[str, dict[str, Any]] = OrderedDict()
        for overrides in grid:
            cfg = self.hydra_context.config_loader.load_sweep_config(self.config, list(overrides))
            rid = run_id(cfg)
            if rid in distinct:
                distinct[rid]["duplicates"] += 1
                continue
            run_dir = Path(cfg.paths.runs) / rid
            mark_if_killed(run_dir)
            previous = read_result(run_dir)
            done = bool(previous) and previous.get("status") == Status.OK and \
                previous.get("config_hash") == config_hash(effective_config(cfg)) and not cfg.rerun
            distinct[rid] = {"run_id": rid, "overrides": list(overrides), "run_dir": run_dir, "done": done, "duplicates": 0}
        todo = [row["overrides"] for row in distinct.values() if not row["done"]]
        return todo, list(distinct.values())

    def sweep(self, arguments: list[str]) -> Any:
        todo, runs = self.plan(arguments)
        merged = sum(r["duplicates"] for r in runs)
        done = sum(r["done"] for r in runs)
        log.info("sweep: %d grid points -> %d distinct runs (%d equivalent merged), %d already ok, %d to run",
                 len(runs) + merged, len(runs), merged, done, len(todo))
        sweep_dir = Path(self.config.hydra.sweep.dir)
        sweep_dir.mkdir(parents=True, exist_ok=True)
        returns = []
        batch_size = self.max_batch_size or max(len(todo), 1)
        try:
            for start in range(0, len(todo), batch_size):
                batch: Sequence[Sequence[str]] = todo[start:start + batch_size]
                self.validate_batch_is_legal(batch)
                log.info("sweep: launching runs %d-%d of %d", start + 1, start + len(batch), len(todo))
                returns.append(self.launcher.launch(batch, initial_job_idx=start))
        finally:  # also when a worker was killed and the launcher gave up: every record tells the truth
            for row in runs:
                mark_if_killed(row["run_dir"])
            self.report(runs, sweep_dir)
        return returns

    def report(self, runs: list[dict[str, Any]], sweep_dir: Path) -> None:
        table = summary_table([r["run_dir"] for r in runs])
        name = self.config.get("group") or "sweep"
        table.to_csv(sweep_dir / f"sweep-{name}.csv", index=False)
        print(f"\nsweep '{name}': {len(table)} runs, " + ", ".join(f"{n} {s}" for s, n in table["status"].value_counts().items()))
        print(table.drop(columns=["reason"]).to_string(index=False), flush=True)


def mark_if_killed(run_dir: Path) -> None:
    """A record still saying `running` whose process is gone (SIGKILL, a dead worker) becomes `interrupted`."""
    result = read_result(run_dir)
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
        result = read_result(run_dir) or {"run_id": Path(run_dir).name, "status": "missing"}
        rows.append({k: result.get(k) for k in SUMMARY_COLUMNS} | {"run_id": Path(run_dir).name})
    table = pd.DataFrame(rows, columns=SUMMARY_COLUMNS)
    table["peak_mem_gb"] = (table.pop("peak_mem_bytes").astype(float) / 2**30).round(2)
    table["train_tokens_per_s"] = table["train_tokens_per_s"].astype(float).round(0)
    return table
