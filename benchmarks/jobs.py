"""What the benchmark's timed jobs share: the repository, the offline environment, a logged subprocess, the lock
that keeps heavy jobs apart, and medians that skip what a failed run did not report."""

from __future__ import annotations

import os
import statistics
import subprocess
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
ENV = {"HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false", "WANDB_SILENT": "true"}


def hold_lock(path: str):
    """Block until the shared flock is ours; it is released when the process exits."""
    import fcntl

    handle = open(path, "a")  # noqa: SIM115 - kept open for the life of the process
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        print(f"bench: waiting for {path} (another heavy job holds it)", flush=True)
        fcntl.flock(handle, fcntl.LOCK_EX)
    return handle


def run_logged(cmd: list[str], env: dict[str, str], log: Path) -> int:
    """`cmd` from the repository root, offline, its stdout and stderr into `log`; its exit status."""
    with open(log, "w") as fh:
        return subprocess.run(cmd, cwd=REPO, env={**os.environ, **ENV, **env}, stdout=fh, stderr=subprocess.STDOUT).returncode


def median(values: list[float | None]) -> float | None:
    """The median of the values that were measured (None: a run that failed or did not report it)."""
    values = [v for v in values if v is not None]
    return statistics.median(values) if values else None


def ratio_text(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.2f}"
