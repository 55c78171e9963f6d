"""Bad input by class: every way a data file can be wrong, every way a run folder's location can be unusable, and
an out-of-range value of every numeric knob gets one line saying what and how to fix it, exit code 2, before any
work, and no run folder."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from conftest import compose, run_cli
from harness.config import validate
from harness.errors import ConfigError

GOOD = [{"tweet": f"tweet number {i}", "mood": ["positive", "negative", "neutral"][i % 3]} for i in range(30)]
FIELDS = "task.fields={text: tweet, label: mood}"


def _jsonl(path: Path, rows: list) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def _data(case: str, tmp: Path) -> Path:
    """A data file that is wrong in one way."""
    if case == "missing":
        return tmp / "no-such-file.jsonl"
    if case == "empty":
        (tmp / "empty.jsonl").write_text("")
        return tmp / "empty.jsonl"
    if case == "not text":
        (tmp / "binary.jsonl").write_bytes(bytes(range(256)) * 8)
        return tmp / "binary.jsonl"
    if case == "a folder":
        (tmp / "folder.jsonl").mkdir()
        return tmp / "folder.jsonl"
    if case == "malformed row":
        path = _jsonl(tmp / "bad-row.jsonl", GOOD)
        path.write_text(path.read_text() + '{"tweet": "half a row", "mood": \n')
        return path
    if case == "missing column":
        return _jsonl(tmp / "no-mood.jsonl", [{"tweet": r["tweet"]} for r in GOOD])
    if case == "mistyped column":
        return _jsonl(tmp / "list-text.jsonl", [{"tweet": [r["tweet"]], "mood": r["mood"]} for r in GOOD])
    if case == "one label only":
        return _jsonl(tmp / "labels.jsonl", [{"tweet": r["tweet"], "mood": "ecstatic"} for r in GOOD])
    if case == "empty field":
        return _jsonl(tmp / "blank.jsonl", GOOD + [{"tweet": "   ", "mood": "neutral"}])
    raise AssertionError(case)


DATA_CASES = {
    "missing": "does not exist",
    "empty": "is empty",
    "not text": "cannot read task.path",
    "a folder": "is a folder",
    "malformed row": "cannot read task.path",
    "missing column": "lacks label (column 'mood')",
    "mistyped column": "holds a list or mapping in text",
    "one label only": "the training rows hold one label ('ecstatic')",
    "empty field": "has an empty text",
}


def _one_line_and_nothing_made(proc, expected: str, runs: Path) -> None:
    assert proc.returncode == 2, proc.stderr[-2000:]
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: ") and expected in lines[0], proc.stderr[-2000:]
    assert "Traceback" not in proc.stderr
    assert not runs.exists() or not any(runs.iterdir()), "a rejected input must not leave a run folder"


@pytest.mark.parametrize("case", list(DATA_CASES))
def test_every_kind_of_bad_data_file_is_one_line(case: str, tmp_path: Path) -> None:
    data, runs = _data(case, tmp_path), tmp_path / "runs"
    proc = run_cli(["model=tiny-llama", "task.source=files", f"task.path={data}", FIELDS, "tracking=none",
                    f"paths.runs={runs}"], timeout=300)
    _one_line_and_nothing_made(proc, DATA_CASES[case], runs)


@pytest.mark.parametrize("where,expected", [
    ("/proc/sys/harness-runs", "is not writable"),            # a special file system, read-only even for root
    ("/etc/hostname/runs", "is not writable"),               # under a file: cannot be created
    ("/dev/null/runs", "is not writable"),                   # under a device
])
def test_unusable_run_locations_are_one_line(where: str, expected: str, tmp_path: Path) -> None:
    if where.startswith("/proc/sys") and os.access("/proc/sys", os.W_OK):
        pytest.skip("/proc/sys is writable here")
    proc = run_cli(["model=tiny-llama", "tracking=none", f"paths.runs={where}"], timeout=300)
    _one_line_and_nothing_made(proc, expected, tmp_path / "nothing")


KNOBS = [
    ("r", "0"), ("alpha", "-1"), ("seed", "-1"), ("train.batch_size", "0"), ("train.grad_accum", "0"),
    ("train.max_seq_len", "0"), ("train.max_steps", "0"), ("train.epochs", "-1"), ("train.lr", "0"),
    ("train.lr", "2"), ("train.eval_every", "-5"), ("train.eval_subset", "0"), ("train.warmup_ratio", "1.5"),
    ("train.weight_decay", "-0.1"), ("train.max_grad_norm", "0"), ("train.logging_steps", "0"),
    ("train.save_steps", "0"), ("train.eval_batch_size", "0"), ("task.n_train", "0"), ("task.n_eval", "-3"),
    ("task.max_new_tokens", "0"), ("task.min_confidence", "1.5"), ("task.data_seed", "-2"),
    ("method.peft_kwargs.lora_dropout", "1.0"),
]


@pytest.mark.parametrize("key,value", KNOBS, ids=[f"{k}={v}" for k, v in KNOBS])
def test_every_numeric_knob_out_of_range_is_one_line(key: str, value: str, tmp_path: Path) -> None:
    overrides = [f"{key}={value}", f"paths.runs={tmp_path / 'runs'}"]
    if key == "train.epochs":
        overrides.append("train.max_steps=null")
    with pytest.raises(ConfigError) as err:
        validate(compose(overrides))
    message = str(err.value)
    assert "\n" not in message and key.split(".")[-1] in message and "e.g." in message, message


def test_knowledge_knobs_are_checked(tmp_path: Path) -> None:
    for key in ("task.n_people", "task.bios_per_person"):
        with pytest.raises(ConfigError, match=key):
            validate(compose(["task=knowledge", f"{key}=0", f"paths.runs={tmp_path}"]))
