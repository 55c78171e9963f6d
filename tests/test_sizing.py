"""analysis.sizing: the items a calibration says a cell needs, from hand-made run folders."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from analysis import sizing
from harness.items import write_items


def _run(folder: Path, method: str, scores: np.ndarray, floor: np.ndarray) -> None:
    run = folder / f"style_{method}"
    run.mkdir(parents=True)
    rows = [{"split": "test", "who": "tuned", "id": f"i{k}", "score": float(s), "pred": "", "stats": [float(s), 1.0]}
            for k, s in enumerate(scores)]
    rows += [{"split": "test", "who": "floor:copy", "id": f"i{k}", "score": float(s), "pred": None,
              "stats": [float(s), 1.0]} for k, s in enumerate(floor)]
    write_items(run, rows)
    (run / "result.json").write_text(json.dumps({
        "status": "ok", "method": method, "r": 16, "primary_metric": "sari", "score": float(scores.mean()),
        "floor_name": "copy", "floor_score": float(floor.mean())}))


def test_sizing_reports_gain_retention_and_the_items_a_target_needs(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    floor = rng.uniform(0.3, 0.5, 400)
    _run(tmp_path, "full", floor + 0.20 + rng.normal(0, 0.1, 400), floor)
    _run(tmp_path, "lora", floor + 0.10 + rng.normal(0, 0.1, 400), floor)
    lines = sizing.sizing(tmp_path, "full", 2.0)
    assert "400 shared test items" in lines[0] and "floor copy" in lines[0]
    [retention] = [line for line in lines if "lora r=16 / full" in line]
    point = float(retention.split("gain retention ")[1].split("%")[0])
    assert 40 < point < 60  # 0.10 of 0.20 kept, up to noise
    half = float(retention.split("items half-width ")[1].split(" ")[0])
    need = int(retention.split("would need ~")[1].split(" ")[0])
    assert half > 2 and need > 400  # a wider interval than the target needs more items
    assert need == pytest.approx(sizing.items_needed(half, 400, 2.0), rel=0.05)  # half is printed to 0.1 point


def test_items_needed_scales_with_the_square_of_the_half_width() -> None:
    assert sizing.items_needed(4.0, 100, 2.0) == 400
    assert sizing.items_needed(1.0, 100, 2.0) == 25
    assert sizing.items_needed(float("nan"), 100, 2.0) is None


def test_a_folder_without_runs_fails_in_one_line(tmp_path: Path, capsys) -> None:
    with pytest.raises(SystemExit) as stop:
        sizing.main([str(tmp_path)])
    assert "no finished run with per-item records" in str(stop.value)
    with pytest.raises(SystemExit) as stop:
        sizing.main([str(tmp_path / "missing")])
    assert stop.value.code == 2 and "is not a folder" in capsys.readouterr().err
