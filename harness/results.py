"""The run record: `result.json` (written atomically), its status enum, and provenance stamps."""

from __future__ import annotations

import functools
import hashlib
import json
import os
import subprocess
import tempfile
from datetime import datetime, timezone
from enum import Enum
from importlib import metadata
from pathlib import Path
from typing import Any

from harness.assets import REPO_ROOT

RESULT_FILE = "result.json"
REQUIRED_KEYS = (
    "run_id", "status", "model", "method", "task", "r", "alpha", "targets", "seed", "params_total",
    "params_trainable", "trainable_pct", "peak_mem_bytes", "mem_kind", "train_tokens_per_s",
    "train_samples_per_s", "train_runtime_s", "adapter_bytes", "score", "metrics", "base_score",
    "started_at", "finished_at", "versions", "git_commit",
)


class Status(str, Enum):
    """How a run ended. A resumed sweep re-runs all but OK and COLLAPSED (both are results; see `is_done`), and
    INVALID when the same config was rejected by the same code (`rejected_before`)."""

    RUNNING = "running"          # started; a record still saying this after the process is gone was killed hard
    OK = "ok"
    COLLAPSED = "collapsed"      # trained to the end, finite, but failed (loss ended above its start, or one-class
                                 # predictions); scores kept, never selected or averaged
    FAILED = "failed"            # an error in the run (reason recorded)
    INVALID = "invalid"          # the config cannot work (reason recorded); nothing was trained
    OOM = "oom"
    DIVERGED = "diverged"        # NaN / inf loss
    INTERRUPTED = "interrupted"  # SIGINT / SIGTERM


DONE_STATUSES = (Status.OK.value, Status.COLLAPSED.value)


def is_done(previous: dict[str, Any] | None, config_hash: str) -> bool:
    """Whether a run folder already holds this config's finished result (re-running it would repeat it exactly)."""
    return bool(previous) and previous.get("status") in DONE_STATUSES and previous.get("config_hash") == config_hash


def rejected_before(previous: dict[str, Any] | None, config_hash: str) -> bool:
    """Whether a run folder records this config as `invalid` under this code: a retry would be rejected again."""
    return (bool(previous) and previous.get("status") == Status.INVALID.value
            and previous.get("config_hash") == config_hash and previous.get("code_fingerprint") == code_fingerprint())


@functools.lru_cache(maxsize=1)
def code_fingerprint() -> str:
    """SHA-256 (16 hex) of the harness's code and configs: what decides whether a config is accepted."""
    digest = hashlib.sha256()
    for pattern in ("harness/**/*.py", "conf/**/*.yaml", "hydra_plugins/**/*.py"):
        for path in sorted(REPO_ROOT.glob(pattern)):
            digest.update(str(path.relative_to(REPO_ROOT)).encode() + b"\0" + path.read_bytes())
    return digest.hexdigest()[:16]


def now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def write_json_atomic(path: Path, data: dict[str, Any]) -> None:
    """Write to a temporary file in the same folder, fsync, then rename: readers see old or new, never half."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            json.dump(data, fh, indent=2, sort_keys=False, default=str)
            fh.write("\n")
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def read_json(path: Path) -> dict[str, Any] | None:
    try:
        return json.loads(Path(path).read_text())
    except (OSError, json.JSONDecodeError):
        return None


def read_result(run_dir: Path) -> dict[str, Any] | None:
    return read_json(Path(run_dir) / RESULT_FILE)


def versions() -> dict[str, str | None]:
    names = ("torch", "transformers", "peft", "bitsandbytes", "accelerate", "datasets", "evaluate", "hydra-core", "wandb")
    found: dict[str, str | None] = {}
    for name in names:
        try:
            found[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            found[name] = None
    found["harness"] = metadata.version("peft-harness") if _installed("peft-harness") else None
    return found


def _installed(name: str) -> bool:
    try:
        metadata.version(name)
        return True
    except metadata.PackageNotFoundError:
        return False


def git_commit() -> str | None:
    """The harness checkout's commit, with '-dirty' when tracked files have uncommitted changes."""
    try:
        sha = subprocess.run(["git", "rev-parse", "HEAD"], cwd=REPO_ROOT, capture_output=True, text=True, check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=REPO_ROOT,
                               capture_output=True, text=True, check=True).stdout.strip()
        return sha + ("-dirty" if dirty else "")
    except (OSError, subprocess.CalledProcessError):
        return None
