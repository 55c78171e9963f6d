"""One fine-tuning run: load, measure the base, train with `Trainer`, score, save, record, track.

    python -m harness.run                                    # LoRA r=16 (q,v) on classify, SmolLM2-135M
    python -m harness.run method=full task=classify model=minilm-l6 seed=1
    python -m harness.run --cfg job                          # print the composed config

Each run writes `paths.runs/<run_id>/`: `result.json` (see harness/results.py), the saved adapter or model,
Hydra's resolved config (`.hydra/`), the log, and W&B's files. `main` returns the score (Hydra sweepers use it).
"""

from __future__ import annotations

import contextlib
import errno
import logging
import shutil
import signal
import sys
import traceback
from pathlib import Path
from typing import Any, Iterator

import hydra
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import DictConfig

from harness import distributed, preflight
from harness.assets import CONF_DIR
from harness.config import RunSpec, identity, validate, with_single_budget
from harness.errors import HarnessError
from harness.sweep_plan import moved_sweep_arguments
from harness.results import RESULT_FILE, Status, code_fingerprint, is_done, now, write_json_atomic
from harness.runfolder import read_record

log = logging.getLogger("harness")


def main_body(spec: RunSpec, run_dir: Path) -> dict[str, Any]:
    """Run a validated spec, unless its folder already holds it; the record is written before training starts
    and rewritten when it ends."""
    from harness.pipeline import execute  # heavy imports (torch, transformers) only once the config is good

    previous = read_record(run_dir)
    if is_done(previous, spec.config_hash) and not spec.cfg.rerun:
        log.info("already done: %s (status %s); rerun=true runs it again", run_dir, previous["status"])
        return previous
    if previous and previous.get("config_hash") not in (None, spec.config_hash):
        raise HarnessError(f"{run_dir} holds the result of another config; choose another paths.runs")
    if not previous and (adopted := adopt_shared(spec, run_dir)) is not None:
        return adopted
    return execute(spec, run_dir)


def adopt_shared(spec: RunSpec, run_dir: Path) -> dict[str, Any] | None:
    """A run that two sweeps of a study name runs once: with `paths.shared` set (the study sets its runs root),
    a finished run of the same id and config hash in a sibling sweep's folder is copied into this one. The copy
    keeps its record as written (its `group` names the sweep that trained it)."""
    shared = spec.cfg.paths.get("shared")
    if not shared or spec.cfg.rerun:
        return None
    for source in sorted(Path(shared).glob(f"*/{run_dir.name}")):
        record = read_record(source)
        if source.resolve() == run_dir.resolve() or not is_done(record, spec.config_hash):
            continue
        log.info("already done in a sibling sweep: %s; copied to %s", source, run_dir)
        shutil.copytree(source, run_dir, dirs_exist_ok=True, ignore=shutil.ignore_patterns(".hydra", "*.log"))
        return record
    return None


def _terminate(signum, frame):
    raise KeyboardInterrupt(f"signal {signal.Signals(signum).name}")


@contextlib.contextmanager
def _signals_deferred() -> Iterator[None]:
    """While a run's ending is recorded, SIGTERM and SIGINT wait: a launcher sends SIGTERM to every rank as
    soon as one dies, often just after this rank heard of it from gloo, and an interrupt raised while the
    failure was being written left the record saying "running". One that arrived is raised afterwards."""
    arrived: list[int] = []
    # a signal the process ignores (SIGINT in a background job) stays ignored
    previous = {sig: signal.signal(sig, lambda signum, frame: arrived.append(signum))
                for sig in (signal.SIGTERM, signal.SIGINT) if signal.getsignal(sig) is not signal.SIG_IGN}
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    if arrived:
        raise KeyboardInterrupt(f"signal {signal.Signals(arrived[0]).name}")


@hydra.main(config_path=str(CONF_DIR), config_name="config", version_base="1.3")
def main(cfg: DictConfig) -> float | None:
    from harness.training import quiet_library_bars_without_terminal

    signal.signal(signal.SIGTERM, _terminate)
    quiet_library_bars_without_terminal()
    run_dir = Path(HydraConfig.get().runtime.output_dir)
    multirun = HydraConfig.get().mode == RunMode.MULTIRUN
    spec: RunSpec | None = None
    try:
        spec = validate(cfg)  # the run's one resolved config, passed down from here
        result = main_body(spec, run_dir)
    except (Exception, KeyboardInterrupt) as err:  # noqa: BLE001 - recorded, then reported in one line
        with _signals_deferred():
            return _end(err, spec if spec is not None else cfg, run_dir, multirun)
    if not distributed.world().main:  # its share is in rank 0's record, which says how the run ended
        return None
    if result["status"] != Status.OK:
        return _fail(run_dir, Status(result["status"]), result.get("reason", ""), multirun, exit_code=1, record=False)
    return result["score"]


def _end(err: BaseException, cfg: RunSpec | DictConfig, run_dir: Path, multirun: bool) -> None:
    """Record how a run that raised ended; an interrupt is raised again, so it stops a sweep too (its summary
    still runs), not only the current run."""
    if isinstance(err, HarnessError):
        return _fail(run_dir, Status.INVALID, str(err), multirun, exit_code=2, cfg=cfg)
    if isinstance(err, KeyboardInterrupt):
        _fail(run_dir, Status.INTERRUPTED, f"interrupted ({err or 'SIGINT'})", multirun, exit_code=130, cfg=cfg)
        raise err
    # each rank its own traceback: the rank that failed first is the one to read, and a shared file kept the last
    name = "error.txt" if distributed.world().main else f"rank{distributed.world().rank}-error.txt"
    (run_dir / name).write_text("".join(traceback.format_exception(err)))
    status = Status.OOM if _is_oom(err) else Status.FAILED
    reason = f"{type(err).__name__}: {err}".splitlines()[0][:300]
    if isinstance(err, OSError) and err.errno == errno.ENOSPC:
        reason = f"disk full: {reason}"
    return _fail(run_dir, status, reason, multirun, exit_code=1, cfg=cfg)


def _is_oom(err: BaseException) -> bool:
    import torch

    if isinstance(err, (torch.OutOfMemoryError, MemoryError)):
        return True
    # the CPU allocator reports a memory cap (ulimit, cgroup) as a RuntimeError
    return isinstance(err, RuntimeError) and ("can't allocate memory" in str(err) or "out of memory" in str(err).lower())


def _fail(run_dir: Path, status: Status, reason: str, multirun: bool, exit_code: int, record: bool = True,
          cfg: RunSpec | DictConfig | None = None) -> None:
    """Record how the run ended (keeping what the record already holds) and say it in one line: the identity is
    the spec's, or, for a config that failed before it had one (invalid), the composed config's. Under a
    launcher only rank 0 writes result.json: another rank leaves its reason for rank 0's record, and rank 0,
    stopped because a rank died, names that rank."""
    if distributed.world().size > 1:
        if not distributed.world().main:
            if record and status != Status.INTERRUPTED:
                distributed.record_failure(run_dir, f"{status.value}: {reason}")
            record = False
        elif (failed := distributed.other_rank_failure(run_dir)) is not None:
            status, reason = Status.FAILED, failed
        elif status == Status.INTERRUPTED:
            reason += f"; under a {distributed.world().size}-process launch this is also how the launcher stops " \
                      "the other ranks when one dies"
    if record:
        result = read_record(run_dir) or {}
        if not result and cfg is not None:
            try:
                result = cfg.identity if isinstance(cfg, RunSpec) else identity(cfg)
            except Exception:  # noqa: BLE001 - a config too broken to identify still gets its status
                result = {"run_id": run_dir.name}
        write_json_atomic(run_dir / RESULT_FILE, {**result, "status": status.value, "reason": reason, "finished_at": now(),
                                                  "code_fingerprint": code_fingerprint()})
    print(f"error: {reason}" if status == Status.INVALID else f"run {status.value}: {reason} ({run_dir})", file=sys.stderr)
    if not multirun:
        sys.exit(exit_code)
    return None


def cli() -> None:
    """Check the command line before Hydra starts, so a typo costs one line and no run folder."""
    sys.argv[1:] = with_single_budget(moved_sweep_arguments(sys.argv[1:]))
    preflight.check_or_exit(sys.argv[1:])
    main()


if __name__ == "__main__":
    cli()
