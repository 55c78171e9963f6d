"""Successive halving assumes a rung is a prefix of the full run: a run paused at a rung and resumed from its
checkpoint must train exactly as one that was never stopped. Checked for the methods the halving sweeps use, on
tiny-llama in fp32 (an adapter's own state, e.g. PiSSA's residual base or DoRA's magnitude, must survive)."""

from __future__ import annotations

from pathlib import Path

import pytest

from conftest import TINY, run_inprocess

STEPS = ["train.max_steps=4", "train.eval_every=2", "train.eval_subset=8", "train.precision=fp32"]


# the methods whose state is most at risk: PiSSA's residual base is rebuilt, DoRA's magnitude is its own tensor,
# full FT's optimizer holds every weight (LoHa, LoKr and IA3 passed the same check when it was written, 2026-12-07)
@pytest.mark.parametrize("method", ["lora", "dora", "pissa", "full"])
def test_a_run_resumed_at_a_rung_trains_as_one_never_stopped(method: str, tmp_path: Path) -> None:
    args = ["model=tiny-llama", *TINY, *STEPS, f"method={method}"]
    paused, run_dir = run_inprocess([*args, "rung_step=2"], tmp_path / "halved")
    assert paused["status"] == "paused" and paused["rung_step"] == 2
    resumed, _ = run_inprocess(args, tmp_path / "halved")
    whole, _ = run_inprocess(args, tmp_path / "whole")
    assert resumed["status"] == whole["status"] == "ok" and resumed["resumed_from"] == "checkpoint-2"
    # the checkpoint's log history carries steps 1-2; steps 3-4 are the resumed segment's own
    assert [s for s, _ in resumed["loss_curve"]] == [s for s, _ in whole["loss_curve"]] == [1, 2, 3, 4]
    assert [x for _, x in resumed["loss_curve"]] == pytest.approx([x for _, x in whole["loss_curve"]], rel=1e-5)
    assert [p["step"] for p in resumed["val_curve"]] == [p["step"] for p in whole["val_curve"]] == [2, 4]
