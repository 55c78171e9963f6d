"""The record's schema (harness/results.py FIELDS) is the one description of result.json: the table on the docs
page docs/runs.md is generated from it, every key a run writes is in it, and the analysis frame's record columns come from it."""

from __future__ import annotations

import json
from pathlib import Path

from analysis import runs as analysis_runs
from harness.results import FIELDS, RECORD_COLUMNS, REQUIRED_KEYS, documented_keys, markdown_table
from harness.runfolder import RESULT_FILE, find_runs

REPO = Path(__file__).resolve().parent.parent


def test_the_runs_page_table_is_the_schema() -> None:
    assert markdown_table() in (REPO / "docs" / "runs.md").read_text()


def test_every_key_of_the_committed_records_is_documented() -> None:
    folders = find_runs([REPO / "results" / "study", REPO / "results" / "study-2026-12"])
    assert len(folders) >= 50  # the study's records, committed
    undocumented = {k for f in folders for k in json.loads((f / RESULT_FILE).read_text())} - documented_keys()
    assert not undocumented, sorted(undocumented)


def test_required_keys_and_columns_are_documented_and_unique() -> None:
    keys = [k for f in FIELDS for k in f.keys]
    assert len(keys) == len(set(keys))  # each key described once
    assert all(set(f.required) | set(f.columns) <= set(f.keys) for f in FIELDS)
    assert {"run_id", "status", "score", "config_hash"} <= set(RECORD_COLUMNS) and "status" in REQUIRED_KEYS
    assert analysis_runs.COLUMNS[:len(RECORD_COLUMNS)] == list(RECORD_COLUMNS)
