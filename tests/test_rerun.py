"""python -m harness.rerun: which code re-runs a record, the config it composes, the comparison with its
tolerance, bad input, and one real tiny-model re-run end to end."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from harness import rerun as rr
from harness.provenance import DIFF_FILE
from tests.conftest import REPO, TINY, run_inprocess

TOL = {"score": 0.01, "val_score": 0.01, "loss": 1e-3}
CURVE = [[10, 1.09], [20, 1.00], [30, 0.87]]
STUDY_RECORD = REPO / "results/study-2026-12/fair-classify/runs/classify_minilm-l6_lora_r16_all-linear_s1_f3f60b53"


def head() -> str:
    return subprocess.run(["git", "rev-parse", "HEAD"], cwd=REPO, capture_output=True, text=True, check=True).stdout.strip()


def record(**extra) -> dict:
    return {"run_id": "r", "status": "ok", "score": 0.81, "val_score": 0.80, "loss_curve": CURVE, **extra}


def test_within_tolerance() -> None:
    rows = rr.compare(record(), record(score=0.815, loss_curve=[[10, 1.0905], [20, 1.0], [30, 0.87]]), TOL)
    assert [r["within"] for r in rows] == [True, True, True]
    assert rows[0]["diff"] == pytest.approx(0.005) and rows[2]["parts_at_step"] is None


def test_outside_tolerance_names_where_the_runs_part() -> None:
    other = record(score=0.843, val_score=0.80, loss_curve=[[10, 1.09], [20, 1.01], [30, 0.80]])
    score, val, loss = rr.compare(record(), other, TOL)
    assert score["within"] is False and score["diff"] == pytest.approx(0.033)
    assert val["within"] is True
    assert loss["within"] is False and loss["parts_at_step"] == 20 and loss["worst_step"] == 30
    assert loss["diff"] == pytest.approx(-0.07)
    assert "NO" in rr.table([score, val, loss])


def test_curves_logged_at_other_steps_are_not_within_tolerance() -> None:
    loss = rr.compare_curves(CURVE, CURVE[:2], 1e-3)
    assert loss["parts_at_step"] is None and loss["within"] is False
    assert rr.compare(record(), record(score=None), TOL)[0]["within"] is None


def test_source_of_a_clean_record_is_its_commit(tmp_path: Path) -> None:
    source = rr.plan_source({"git_commit": head(), "git_dirty": False}, tmp_path)
    assert (source.kind, source.commit, source.diff) == ("commit", head(), None)


def test_source_of_a_dirty_record_with_its_diff_is_the_commit_plus_the_diff(tmp_path: Path) -> None:
    (tmp_path / DIFF_FILE).write_text("")
    source = rr.plan_source({"git_commit": head() + "-dirty", "git_dirty": True, "diff_file": DIFF_FILE}, tmp_path)
    assert (source.kind, source.diff) == ("commit", tmp_path / DIFF_FILE)


def test_dirty_record_without_a_diff_is_not_reproducible_from_its_commit(tmp_path: Path) -> None:
    source = rr.plan_source({"git_commit": head() + "-dirty"}, tmp_path)  # an older record: no git_dirty key
    assert source.kind == "head" and "NOT REPRODUCIBLE FROM ITS COMMIT" in source.notes[0]
    bare = rr.plan_source({"git_commit": head() + "-dirty"}, tmp_path, on="commit")
    assert (bare.kind, bare.commit, bare.diff) == ("commit", head(), None) and "without" in bare.notes[0]
    assert rr.plan_source({"git_commit": "0" * 40}, tmp_path).kind == "head"
    assert rr.plan_source({}, tmp_path).notes == ["the record names no commit: re-run on this checkout"]


def test_commit_code_is_extracted_and_a_bad_diff_is_one_error(tmp_path: Path) -> None:
    src = rr.materialise(rr.Source("commit", head()), tmp_path / "src")
    assert (src / "harness" / "run.py").is_file() and (src / "conf" / "config.yaml").is_file()
    bad = tmp_path / DIFF_FILE
    bad.write_text("diff --git a/harness/none.py b/harness/none.py\n--- a/harness/none.py\n+++ b/harness/none.py\n"
                   "@@ -1 +1 @@\n-a\n+b\n")
    with pytest.raises(rr.ConfigError, match="does not apply"):
        rr.materialise(rr.Source("commit", head(), bad), tmp_path / "src2")


def test_the_written_config_composes_to_the_records_effective_config(tmp_path: Path) -> None:
    """The study record's config over the composed defaults gives back the same effective config (same hash)."""
    from hydra import compose, initialize_config_dir

    from harness.assets import CONF_DIR
    from harness.config import config_hash, effective_config

    original = json.loads((STUDY_RECORD / "result.json").read_text())
    conf = tmp_path / "conf"
    shutil.copytree(CONF_DIR, conf)
    name = rr.rerun_config(original["config"], tmp_path / "runs", tmp_path / "cache", conf)
    with initialize_config_dir(config_dir=str(conf), version_base="1.3"):
        cfg = compose(config_name=name)
    assert effective_config(cfg) == original["config"]
    assert config_hash(effective_config(cfg)) == original["config_hash"]
    assert cfg.paths.runs == str(tmp_path / "runs") and cfg.tracking.backend == "none"


def test_folder_without_a_record_is_one_line_error(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    assert rr.main([str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "result.json" in err and err.count("\n") == 1


def test_missing_interpreter_is_one_line_error(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    (tmp_path / "result.json").write_text("{}")
    assert rr.main([str(tmp_path), "--python", str(tmp_path / "nope")]) == 2
    assert "is not an interpreter" in capsys.readouterr().err


def test_continual_stage_is_refused(tmp_path: Path) -> None:
    (tmp_path / "result.json").write_text(json.dumps({"config": {"model": {}, "method": {}, "task": {}, "train": {},
                                                                 "init_from": "parent"}}))
    with pytest.raises(rr.ConfigError, match="continual stage"):
        rr.load_record(tmp_path)


def test_tiny_run_reruns_end_to_end(tmp_path: Path) -> None:
    """A real tiny-model run, then `python -m harness.rerun` on it: same code, versions and seed."""
    result, run_dir = run_inprocess(["model=tiny-bert", *TINY], tmp_path / "runs")
    assert result["status"] == "ok" and result["git_dirty"] is not None
    assert (run_dir / DIFF_FILE).is_file() == bool(result["git_dirty"])
    out = tmp_path / "rerun"
    done = subprocess.run([sys.executable, "-m", "harness.rerun", str(run_dir), "--out", str(out), "--threads", "1"],
                          cwd=REPO, capture_output=True, text=True, timeout=600)
    report = json.loads((out / "rerun.json").read_text())
    assert report["rerun_status"] == "ok", done.stdout + done.stderr
    assert report["source"].startswith("commit ") and not report["source_notes"]
    assert not any(n.startswith("effective config differs") for n in report["notes"])
    assert [r["quantity"] for r in report["rows"]] == ["score", "val_score", "loss_curve"]
    assert "quantity" in done.stdout and "loss_curve" in done.stdout
    assert done.returncode == (0 if report["reproduced"] else 1)
