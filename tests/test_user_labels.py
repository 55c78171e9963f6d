"""The user's own data as they have it: files saved with a UTF-8 byte-order mark, classification over whatever labels
the training rows hold (integers or strings, two or more), labels outside training as one-line errors, a collapse
check that follows imbalanced references, and the label set and balance in the record."""

from __future__ import annotations

import codecs
import json
from pathlib import Path

import pytest
from omegaconf import OmegaConf

from conftest import TINY, run_inprocess
from harness.assets import cache_dir
from harness.errors import ConfigError
from harness.results import documented_keys
from harness.tasks import CONF_TASK_DIR, get_task
from harness.tasks.base import SPLITS
from harness.tasks.classify import parse_label
from harness.training_budget import collapse_reason

# The builtin classify data (data_seed 1234, min_confidence 0.8) as prepared before labels became per task: the
# user-label work must leave it byte-identical.
BUILTIN_CLASSIFY_FINGERPRINT = "d51fc743d4eb87d2"


def classify_cfg(**overrides):
    return OmegaConf.merge(OmegaConf.load(CONF_TASK_DIR / "classify.yaml"), overrides)


def write_jsonl(path: Path, rows: list[dict], bom: bool = False) -> Path:
    text = "".join(json.dumps(r) + "\n" for r in rows)
    path.write_bytes((codecs.BOM_UTF8 if bom else b"") + text.replace("\n", "\r\n" if bom else "\n").encode())
    return path


def spam_rows(n: int = 40) -> list[dict]:
    return [{"body": f"message number {i} about {'a prize' if i % 2 else 'lunch'}", "kind": "spam" if i % 2 else "ham"}
            for i in range(n)]


# ---- files with a byte-order mark ----

def test_jsonl_with_a_byte_order_mark_reads_like_one_without(tmp_path: Path, monkeypatch) -> None:
    import datasets

    from harness.tasks import sources

    # datasets 5 tolerates a BOM itself; older releases (the project allows datasets>=3) fell back to pandas, which
    # failed on it ("Expected object or value"): the files must reach every release already decoded as utf-8-sig
    encodings, load = [], datasets.load_dataset
    monkeypatch.setattr(sources.datasets, "load_dataset",
                        lambda *a, **kw: encodings.append(kw.get("encoding")) or load(*a, **kw))
    fields = {"text": "body", "label": "kind"}
    plain = get_task(classify_cfg(source="files", path=str(write_jsonl(tmp_path / "a.jsonl", spam_rows())),
                                  fields=fields), tmp_path / "c1")
    bom = get_task(classify_cfg(source="files", path=str(write_jsonl(tmp_path / "b.jsonl", spam_rows(), bom=True)),
                                fields=fields), tmp_path / "c2")
    assert bom.fingerprint() == plain.fingerprint()  # the same prepared rows, byte for byte
    assert bom.labels == ["ham", "spam"] and encodings == ["utf-8-sig", "utf-8-sig"]


def test_a_hub_class_column_gives_its_class_names(tmp_path: Path) -> None:
    import datasets

    from harness.tasks.sources import split_rows

    features = datasets.Features({"text": datasets.Value("string"), "label": datasets.ClassLabel(names=["neg", "pos"])})
    split = datasets.Dataset.from_dict({"text": ["bad film", "good film"], "label": [0, 1]}, features=features)
    task = get_task(classify_cfg(source="hub", dataset="someone/reviews"), tmp_path)
    assert [r["label"] for r in split_rows(task, split, "reviews")] == ["neg", "pos"]


def test_csv_with_a_byte_order_mark_keeps_its_first_column_name(tmp_path: Path) -> None:
    lines = ["text,label"] + [f"note {i} for you,{i % 2}" for i in range(30)]
    (tmp_path / "d.csv").write_bytes(codecs.BOM_UTF8 + ("\r\n".join(lines) + "\r\n").encode())
    task = get_task(classify_cfg(source="files", path=str(tmp_path / "d.csv")), tmp_path / "c")
    rows = task.read_split("train")
    assert rows[0]["text"].startswith("note ") and task.labels == ["0", "1"]


# ---- any label set ----

def test_integer_labels_are_the_classes_in_numeric_order(tmp_path: Path) -> None:
    rows = [{"text": f"review {i} of the film", "stars": [2, 10, 1][i % 3]} for i in range(45)]
    task = get_task(classify_cfg(source="files", path=str(write_jsonl(tmp_path / "r.jsonl", rows)),
                                 fields={"label": "stars"}), tmp_path / "c")
    assert task.labels == ["1", "2", "10"]
    row = task.read_split("test")[0]
    assert row["label"] in task.labels and task.label_id(row) == task.labels.index(row["label"])
    prompt = task.render(row)
    assert "1, 2, 10" in prompt and "sentiment" not in prompt and row["text"] in prompt
    assert task.predicted_label("10") == "10" and task.predicted_label("1.") == "1"


def test_two_string_labels_prompt_parse_and_score(tmp_path: Path) -> None:
    task = get_task(classify_cfg(source="files", path=str(write_jsonl(tmp_path / "s.jsonl", spam_rows())),
                                 fields={"text": "body", "label": "kind"}), tmp_path / "c")
    assert task.labels == ["ham", "spam"]
    assert all("ham, spam" in task.render({"text": "hi", "label": "ham"}, t) for t in range(5))  # instruct's too
    assert parse_label("Spam!", task.labels) == "spam" and parse_label("It is ham, not spam", task.labels) == "ham"
    scores = task.score(["spam", "Ham.", "no idea"], [{"label": "spam"}, {"label": "spam"}, {"label": "ham"}])
    assert scores["accuracy"] == pytest.approx(1 / 3) and scores["answered_rate"] == pytest.approx(2 / 3)


def test_builtin_sentiment_data_and_prompt_are_unchanged() -> None:
    task = get_task(classify_cfg(), cache_dir())
    assert task.fingerprint() == BUILTIN_CLASSIFY_FINGERPRINT
    assert task.labels == ["negative", "neutral", "positive"]
    assert task.render({"text": "so good", "label": "positive"}).startswith(
        "Classify the sentiment of this tweet as positive, negative or neutral.")


@pytest.mark.parametrize(("rows", "message"), [
    ([{"text": f"t {i}", "label": "same"} for i in range(20)], "hold one label \\('same'\\)"),
    ([{"text": f"t {i}", "label": ["Spam", "spam", "ham"][i % 3]} for i in range(30)], "differ only in case"),
])
def test_label_set_errors_are_one_line(tmp_path: Path, rows, message) -> None:
    with pytest.raises(ConfigError, match=message) as err:
        get_task(classify_cfg(source="files", path=str(write_jsonl(tmp_path / "d.jsonl", rows))), tmp_path).prepare()
    assert "\n" not in str(err.value)


def test_labels_only_in_test_are_named(tmp_path: Path) -> None:
    train = write_jsonl(tmp_path / "train.jsonl", [{"text": f"t {i}", "label": i % 2} for i in range(20)])
    test = write_jsonl(tmp_path / "test.jsonl", [{"text": f"u {i}", "label": i % 4} for i in range(8)])
    cfg = classify_cfg(source="files", path={"train": str(train), "test": str(test)})
    with pytest.raises(ConfigError, match="labels '2', '3' appear in test but never in the training rows") as err:
        get_task(cfg, tmp_path / "c").prepare()
    assert "\n" not in str(err.value)


# ---- collapse relative to the references ----

def test_imbalanced_references_are_no_false_collapse() -> None:
    refs = ["ham"] * 54 + ["spam"] * 6                        # 90% one class
    assert collapse_reason([], ["ham"] * 57 + ["spam"] * 3, refs) is None  # 95% ham: follows the data
    assert collapse_reason([], ["0"] * 60, ["0"] * 58 + ["1"] * 2) is None  # 97% references: all-majority is no call


def test_real_collapse_is_still_caught() -> None:
    balanced = ["ham", "spam"] * 30
    assert "('spam' for 100% of validation rows, 50% of the references)" in collapse_reason([], ["spam"] * 60, balanced)
    assert collapse_reason([], ["spam"] * 58 + ["ham"] * 2, balanced) is not None  # 97% where 50% is spam
    imbalanced = ["ham"] * 48 + ["spam"] * 12                   # 80% ham
    assert collapse_reason([], ["ham"] * 60, imbalanced) is not None    # 100% vs 80%: collapsed
    assert collapse_reason([], ["spam"] * 60, imbalanced) is not None   # onto the minority class


# ---- the record ----

def test_label_keys_are_in_the_schema() -> None:
    assert {"label_set", "class_balance"} <= documented_keys()


def test_tiny_run_on_integer_labels_records_label_set_and_balance(tmp_path: Path, runs: Path) -> None:
    rows = [{"text": f"support ticket {i} about {'billing' if i % 4 else 'login'}", "label": int(i % 4 == 0)}
            for i in range(60)]
    data = write_jsonl(tmp_path / "tickets.jsonl", rows, bom=True)
    result, _ = run_inprocess(["task=classify", "task.source=files", f"task.path={data}", "model=tiny-bert",
                               "method=lora", *TINY], runs)
    assert result["status"] in ("ok", "collapsed") and result["label_set"] == ["0", "1"]
    balance = result["class_balance"]
    assert set(balance) == set(SPLITS) and sum(balance["train"].values()) == 16
    assert balance["train"]["0"] > balance["train"]["1"] > 0  # 3 to 1 in the data
    assert sum(balance["test"].values()) == 6  # the carved 10% of 60 rows (n_eval=8 caps nothing here)


def test_generation_budget_fits_the_longest_label(tmp_path: Path, monkeypatch) -> None:
    from transformers import AutoTokenizer

    from harness.tasks.base import Task

    rows = [{"text": f"ticket {i}", "label": "billing_and_invoices_department" if i % 2 else "login"} for i in range(30)]
    task = get_task(classify_cfg(source="files", path=str(write_jsonl(tmp_path / "t.jsonl", rows))), tmp_path / "c")
    tokenizer = AutoTokenizer.from_pretrained(cache_dir() / "models" / "smollm2-135m")
    budgets = []
    monkeypatch.setattr(Task, "answers", lambda self, *args, **kwargs: budgets.append(args[6]) or [])
    task.answers(None, tokenizer, [], "cpu", 8, 64)
    longest = len(tokenizer("billing_and_invoices_department", add_special_tokens=False)["input_ids"])
    assert longest + 1 > 4 and budgets == [longest + 1]


def test_a_mixture_asks_a_user_classify_component_with_its_labels(tmp_path: Path) -> None:
    data = write_jsonl(tmp_path / "s.jsonl", spam_rows())
    cfg = OmegaConf.load(CONF_TASK_DIR / "multitask.yaml")
    cfg.components = {"classify": {"source": "files", "path": str(data), "fields": {"text": "body", "label": "kind"}}}
    task = get_task(cfg, tmp_path / "c")
    rows = [r for r in task.read_split("test") if r["task"] == "classify"]
    assert rows and all("one of: ham, spam" in task.messages(r)[0]["content"] for r in rows)
    assert {task.target(r) for r in rows} <= {"ham", "spam"} and task.labels is None  # the mixture itself: no head
