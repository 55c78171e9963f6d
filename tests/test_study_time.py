"""analysis.study_time: a study's cost from its records (hand-made records, no training)."""

from __future__ import annotations

import json
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest

from analysis.study_time import main, process_overheads, sweep_row

T0 = datetime(2026, 12, 7, 8, 0, tzinfo=timezone.utc)


def record(start_s: float, end_s: float, train_s: float, pid: int = 1, **extra) -> dict:
    return {"status": "ok", "lr_protocol": "selection-seed-report", "pid": pid, "train_runtime_s": train_s,
            "started_at": (T0 + timedelta(seconds=start_s)).isoformat(),
            "finished_at": (T0 + timedelta(seconds=end_s)).isoformat(), **extra}


def test_overhead_is_read_over_consecutive_runs_of_one_process_only() -> None:
    runs = [record(0, 130, 100),             # first of its process: no slot
            record(131, 250, 100),           # slot 120 s -> 0.20
            record(251, 400, 100),           # slot 150 s -> 0.50
            record(0, 500, 100, pid=2),      # another process: no slot
            record(5000, 5120, 100)]         # after a stop (gap far beyond its own wall): left out
    assert process_overheads(runs) == pytest.approx([0.20, 0.50])


def test_a_sweep_row_counts_statuses_and_leaves_search_runs_out_of_the_overhead(tmp_path: Path) -> None:
    runs = tmp_path / "fair-x" / "runs"
    records = {
        "a": record(0, 130, 100, base_cached=False),
        "b": record(131, 250, 100, base_cached=True),
        "search": record(300, 400, 50, lr_protocol="selection-seed-search", resumed_from="checkpoint-50"),
        "paused": record(401, 460, 40, status="paused", lr_protocol="selection-seed-search"),
    }
    for name, rec in records.items():
        (runs / name).mkdir(parents=True)
        (runs / name / "result.json").write_text(json.dumps(rec))
    row = sweep_row(runs)
    assert (row["sweep"], row["runs"], row["ok"], row["paused"], row["resumed"]) == ("fair-x", 4, 3, 1, 1)
    assert row["reporting"] == 2 and row["base_cached"] == "1/2"
    assert row["overhead"] == pytest.approx(0.20) and row["overhead_n"] == 1
    assert row["recorded_h"] == pytest.approx((130 + 119 + 100 + 59) / 3600)


def test_cli_writes_the_table_and_rejects_a_missing_folder(tmp_path: Path, capsys) -> None:
    runs = tmp_path / "study" / "s" / "runs" / "one"
    runs.mkdir(parents=True)
    (runs / "result.json").write_text(json.dumps(record(0, 60, 50)))
    (tmp_path / "study" / "budget" / "runs" / "cal").mkdir(parents=True)  # calibrations: not a sweep
    (tmp_path / "study" / "budget" / "runs" / "cal" / "result.json").write_text(json.dumps(record(0, 60, 50)))
    out = tmp_path / "wall.md"
    assert main([str(tmp_path / "study"), "--out", str(out)]) == 0
    text = out.read_text()
    assert "| s | 1 | 1 |" in text and "| budget |" not in text
    assert main([str(tmp_path / "nowhere")]) == 2
    assert capsys.readouterr().err.startswith("error:")
