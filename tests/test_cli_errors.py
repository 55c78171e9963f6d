"""Bad input: one line that says what and how to fix it, a non-zero exit, no traceback, no run folder."""

from __future__ import annotations

import os

import pytest

from conftest import run_cli

CASES = {
    "unknown method": (["method=lorra"], "did you mean 'lora'"),
    "unknown model": (["model=smollm"], "unknown model 'smollm'"),
    "unknown task": (["task=clasify"], "did you mean 'classify'"),
    "unknown key": (["lr=1e-4"], "did you mean 'train.lr'"),
    "rank zero": (["r=0"], "r must be a positive integer"),
    "rank negative": (["r=-4"], "r must be a positive integer"),
    "rank not a number": (["r=abc"], "r must be a positive integer"),
    "steps zero": (["train.max_steps=0"], "train.max_steps must be a positive integer"),
    "lr too large": (["train.lr=3"], "train.lr=3"),
    "bad precision": (["train.precision=int3"], "train.precision must be one of"),
    "runs under a file": (["paths.runs=/etc/hostname/runs"], "paths.runs=/etc/hostname/runs is not writable"),
    "prefix with checkpointing": (["method=prefix", "train.gradient_checkpointing=true"],
                                  "method=prefix cannot train with train.gradient_checkpointing=true"),
}


@pytest.mark.parametrize("case", list(CASES), ids=list(CASES))
def test_bad_input_gets_one_line(case: str, tmp_path) -> None:
    args, expected = CASES[case]
    if not any(a.startswith("paths.runs=") for a in args):
        args = args + [f"paths.runs={tmp_path / 'runs'}"]
    proc = run_cli(args + ["tracking=none"], timeout=120)
    assert proc.returncode == 2, proc.stderr
    lines = [l for l in proc.stderr.splitlines() if l.strip()]
    assert len(lines) == 1, proc.stderr
    assert lines[0].startswith("error: ") and expected in lines[0], lines[0]
    assert "Traceback" not in proc.stderr
    assert not (tmp_path / "runs").exists(), "a rejected config must not leave a run folder"


def test_read_only_location_is_rejected(tmp_path) -> None:
    ro = "/proc/sys/harness-runs"  # read-only even for root
    if os.access("/proc/sys", os.W_OK):
        pytest.skip("/proc/sys is writable here")
    proc = run_cli([f"paths.runs={ro}", "tracking=none"], timeout=120)
    assert proc.returncode == 2 and "is not writable" in proc.stderr and "Traceback" not in proc.stderr


def test_target_group_matching_no_module(tmp_path) -> None:
    proc = run_cli(["model=tiny-llama", "targets.llama.include=[no_such_proj]", f"paths.runs={tmp_path}", "tracking=none"], timeout=300)
    assert proc.returncode == 2, proc.stderr
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith("error: targets=qv matches no module") and "Traceback" not in proc.stderr
