"""What one run's phases share: its spec, where it runs (rank, world), and what each phase leaves for the next."""

from __future__ import annotations

import contextlib
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

from harness import distributed
from harness.assets import cache_dir
from harness.config import RunSpec
from harness.results import Status


@dataclass
class RunContext:
    """The run's state between phases. `record` is the result so far; `ending` a terminal status a phase set
    (the driver writes it and stops); `leave` says this rank's part is done (a rank other than 0 once its share
    is gathered); `timings` the phases' seconds and the finer stopwatches inside them (`phases_s`)."""

    spec: RunSpec
    run_dir: Path
    cache: Path
    main: bool
    sharded: bool  # FSDP / ZeRO-3: every rank holds a shard, so every rank runs the scoring's forward passes
    record: dict[str, Any] = field(default_factory=dict)
    timings: dict[str, float] = field(default_factory=dict)
    ending: tuple[Status, str | None] | None = None
    leave: bool = False
    # filled in by the phases, in order
    task: Any = None
    data: dict[str, Any] = field(default_factory=dict)
    steps: int = 0
    tokenizer: Any = None
    model: Any = None
    plan: Any = None
    init: dict[str, Any] | None = None  # a continual stage's chain (harness/lineage.py)
    probe: list[str] = field(default_factory=list)
    earlier_curve: list[dict[str, Any]] = field(default_factory=list)
    base_items: dict[str, Any] | None = None
    probe_before: Any = None
    tracker: Any = None
    trainer: Any = None
    outputs: dict[str, Any] = field(default_factory=dict)  # the tuned model's outputs and item records per split

    @classmethod
    def start(cls, spec: RunSpec, run_dir: Path) -> RunContext:
        return cls(spec=spec, run_dir=run_dir, cache=cache_dir(spec.cfg.paths.cache), main=distributed.world().main,
                   sharded=(spec.effective.get("dist") or {}).get("strategy") in distributed.SHARDED)

    @property
    def kind(self) -> str:
        return self.spec.model.kind

    @contextlib.contextmanager
    def timed(self, name: str) -> Iterator[None]:
        """Add the block's wall time to `timings[name]` (repeated blocks add up)."""
        t0 = time.perf_counter()
        try:
            yield
        finally:
            self.timings[name] = self.timings.get(name, 0.0) + time.perf_counter() - t0

    def phases_s(self) -> dict[str, float]:
        return {name: round(seconds, 3) for name, seconds in self.timings.items()}

    def end(self, status: Status, reason: str | None) -> None:
        self.ending = (status, reason)

    def predict(self, split, task=None) -> list[str]:
        task = task or self.task
        with self.timed("evaluate"):
            return task.predict(self.model, self.tokenizer, split, self.kind, self.spec.train.eval_batch_size,
                                self.spec.train.max_seq_len)

    def score(self, split, task=None) -> tuple[dict[str, float], list[str]]:
        task = task or self.task
        outputs = self.predict(split, task)
        with self.timed("evaluate"):
            return task.score(outputs, list(split)), outputs

    def score_items(self, split) -> tuple[dict[str, float], list[dict[str, Any]], list[str]]:
        """`score` with the per-item records (harness/items.py) from the same pass."""
        outputs = self.predict(split)
        with self.timed("evaluate"):
            return *self.task.scored_items(outputs, list(split)), outputs
