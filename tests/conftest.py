"""Shared fixtures: compose configs like the CLI does, and run the harness in-process on tiny models."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("WANDB_SILENT", "true")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

REPO = Path(__file__).resolve().parent.parent
# Small enough for seconds per run, large enough to change weights: 3 steps, because the first runs at the warmup's
# learning rate 0 and LoRA's A gets its first gradient only once B has moved (harness/update_check.py checks it).
TINY = ["train.max_steps=3", "train.batch_size=4", "task.n_train=16", "task.n_eval=8", "tracking=none",
        "train.logging_steps=1"]


def compose(overrides: list[str]):
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir

    from harness.assets import CONF_DIR

    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        return hydra_compose(config_name="config", overrides=overrides)


def conf_with(folder: Path, dest: Path) -> Path:
    """conf/ merged with a sweep file's folder, as `make sweep` puts that folder on the search path beside conf/
    (--config-dir): a copy under `dest`, with the folder's own files only (a sweep file may build on another)."""
    import shutil

    from harness.assets import CONF_DIR

    shutil.copytree(CONF_DIR, dest)
    for f in Path(folder).glob("*.yaml"):
        shutil.copy(f, dest / f.name)
    return dest


def run_inprocess(overrides: list[str], runs: Path) -> tuple[dict, Path]:
    """One run through the same pipeline the CLI uses (minus Hydra's process set-up)."""
    from harness.config import validate
    from harness.pipeline import execute

    spec = validate(compose(overrides + [f"paths.runs={runs}"]))
    run_dir = runs / spec.run_id
    return execute(spec, run_dir), run_dir


def run_cli(args: list[str], cwd: Path | None = None, timeout: int = 600, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "harness.run", *args], cwd=cwd or REPO, capture_output=True,
                          text=True, timeout=timeout, env={**os.environ, **(env or {})})


@pytest.fixture
def runs(tmp_path: Path) -> Path:
    return tmp_path / "runs"
