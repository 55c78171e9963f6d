"""The analysis commands on the smoke sweep everyone runs first (`make sweep TASK=classify ARGS="model=tiny-llama
train.max_steps=1 tracking=none"`: 27 runs) never crash: a report that lists what failed and why, or one line.

The fixture is that sweep's result.json files (no weights), with bulky keys the analysis does not read dropped
(samples, per-group update_check, versions, target module lists; compact JSON):
- `before-fix/`: the sweep before the update check knew the methods' structure: 19 `failed` (1-step runs whose
  LoRA A never moved) and 8 `invalid` (r=64 above the tiny model's smaller dimension 32);
- `after-fix/`: the same sweep now: every run `ok` (verdict `too_short`) or `invalid`.
"""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest

from analysis import report
from analysis.claims import report as claims
from analysis.intruder import report as intruder

FIXTURE = Path(__file__).parent / "fixtures" / "smoke-sweep"
MISSING = ("mem_kind", "peak_mem_bytes", "train_tokens_per_s", "score", "val_score", "primary_metric", "config",
           "adapter_bytes", "forgetting", "lr")


def _records(folder: Path) -> dict[str, dict]:
    return {f.parent.name: json.loads(f.read_text()) for f in sorted(folder.glob("*/result.json"))}


def _write(records: dict[str, dict], root: Path) -> Path:
    for run_id, rec in records.items():
        (root / run_id).mkdir(parents=True)
        (root / run_id / "result.json").write_text(json.dumps(rec))
    return root


def variant(name: str, tmp: Path) -> Path:
    """A runs folder: the fixture itself, one run of it, or its records with columns missing."""
    before, after = _records(FIXTURE / "before-fix"), _records(FIXTURE / "after-fix")
    if name in ("before-fix", "after-fix"):
        return FIXTURE / name
    if name == "one-failed-run":
        return _write(dict(list(before.items())[:1]), tmp / name)
    if name == "one-ok-run":
        return _write({k: v for k, v in after.items() if v["status"] == "ok" and "lora_r4_qv" in k}, tmp / name)
    if name == "missing-columns":
        return _write({k: {c: v for c, v in rec.items() if c not in MISSING} for k, rec in after.items()}, tmp / name)
    raise ValueError(name)


VARIANTS = ["before-fix", "after-fix", "one-failed-run", "one-ok-run", "missing-columns"]


def test_the_fixture_is_the_27_run_smoke_sweep() -> None:
    before, after = _records(FIXTURE / "before-fix"), _records(FIXTURE / "after-fix")
    assert len(before) == len(after) == 27 and set(before) == set(after)
    assert {r["status"] for r in before.values()} == {"failed", "invalid"}
    assert {r["status"] for r in after.values()} == {"ok", "invalid"}  # the fixed check: nothing fails
    assert all(r["update_check"]["verdict"] == "too_short" for r in after.values() if r["status"] == "ok")
    invalid = {k for k, r in after.items() if r["status"] == "invalid"}
    assert invalid == {k for k, r in before.items() if r["status"] == "invalid"} and all("_r64_" in k for k in invalid)


@pytest.mark.parametrize("name", VARIANTS)
def test_report_lists_what_failed_and_why(name: str, tmp_path: Path, capsys, monkeypatch) -> None:
    runs = variant(name, tmp_path)
    if name == "after-fix":  # the large-model projection of 19 variants takes ~80 s here; one-ok-run covers it
        monkeypatch.setattr(report, "projection", lambda summary: (pd.DataFrame(), "no projection: skipped"))
    code = report.main(["--runs", str(runs), "--out", str(tmp_path / "report")])
    out, err = capsys.readouterr()
    assert code == 0, err
    text = (tmp_path / "report" / "report.md").read_text()
    assert (tmp_path / "report" / "report.html").exists()
    failures = text.split("## Failures", 1)[1].split("##", 1)[0]
    for run_id, rec in _records(runs).items():
        if rec["status"] != "ok":
            assert run_id in failures and rec["status"] in failures and rec["reason"][:40] in failures
    if not any(r["status"] == "ok" for r in _records(runs).values()):
        assert "no retention to show" in out


@pytest.mark.parametrize("name", VARIANTS)
def test_claims_writes_a_ledger(name: str, tmp_path: Path, capsys) -> None:
    code = claims.main(["--runs", str(variant(name, tmp_path)), "--out", str(tmp_path / "claims"), "--no-estimates",
                        "--report", str(tmp_path / "REPORT.md")])
    assert code == 0, capsys.readouterr().err
    ledger = json.loads((tmp_path / "claims" / "claims.json").read_text())
    assert len(ledger) == 21 and {v["verdict"] for v in ledger} == {"not run"}  # no evidence, no verdict
    assert (tmp_path / "REPORT.md").read_text().strip()


@pytest.mark.parametrize("name", VARIANTS)
def test_intruder_skips_each_run_with_its_reason_then_says_so_in_one_line(name: str, tmp_path: Path, capsys) -> None:
    runs = variant(name, tmp_path)
    code = intruder.main([str(runs), "--out", str(tmp_path / "intruder"), "--wandb", "none", "--device", "cpu"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and err[-1].startswith("error: no finished (status ok) run with saved weights"), err[-3:]
    assert "Traceback" not in "\n".join(err)
    skipped = [line for line in err if line.startswith("skipping ")]
    assert len(skipped) == len(_records(runs))  # each run named once, with why
    for line in skipped:
        if "status invalid" in line:
            assert "exceeds the smaller dimension" in line


def test_an_empty_folder_is_one_line(tmp_path: Path, capsys) -> None:
    (tmp_path / "empty").mkdir()
    assert report.main(["--runs", str(tmp_path / "empty"), "--out", str(tmp_path / "r")]) == 2
    assert claims.main(["--runs", str(tmp_path / "empty"), "--out", str(tmp_path / "c"), "--no-estimates"]) == 2
    assert intruder.main([str(tmp_path / "empty"), "--wandb", "none"]) == 2
    lines = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert len(lines) == 3 and all(line.startswith("error: ") for line in lines), lines
