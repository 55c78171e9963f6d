"""Per-item records (harness/items.py): item stats whose sums give each task's corpus score, the tasks' trivial
floors, the floor chosen on validation, items.jsonl.gz written by every finished run (also from a warm base-score
cache) and copied with the records."""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import numpy as np
import pytest
import sacrebleu
from omegaconf import OmegaConf
from sklearn.metrics import f1_score

from conftest import TINY, run_inprocess
from harness import items
from harness.tasks import CONF_TASK_DIR, get_task
from harness.tasks.base import load_metric, majority


def make_task(name: str, cache: Path, **overrides):
    return get_task(OmegaConf.merge(OmegaConf.load(CONF_TASK_DIR / f"{name}.yaml"), overrides), cache)


def custom_task(tmp_path: Path, metric: str):
    tmp_path.mkdir(parents=True, exist_ok=True)
    data = tmp_path / "pairs.jsonl"
    data.write_text("".join(json.dumps({"input": f"in {i}", "target": f"out {i}"}) + "\n" for i in range(10)))
    return make_task("custom", tmp_path, source="files", path=str(data), metric=metric)


def tweet(text: str, label: str) -> dict:
    return {"text": text, "label": label}


CLASSIFY_ROWS = [tweet("love it", "positive"), tweet("hate it", "negative"), tweet("it is a chair", "neutral"),
                 tweet("so good", "positive"), tweet("meh", "neutral")]
CLASSIFY_OUTPUTS = ["Positive.", "positive", "I think neutral", "no idea", "neutral"]
STYLE_ROWS = [{"ref": f"Gen 1:{i}", "source": s, "target": t} for i, (s, t) in enumerate([
    ("You shall not kill.", "Thou shalt not kill."),
    ("He said to them, go.", "And he said unto them, Go ye."),
    ("God loves the world.", "For God so loved the world."),
    ("Listen to me!", "Hearken unto me!")])]
STYLE_OUTPUTS = ["Thou shalt not kill", "He said unto them go", "", "Hearken unto me, O ye!"]
KNOWLEDGE_ROWS = [{"kind": "qa", "name": "A B", "attribute": a, "question": f"q {a}", "answer": ans}
                  for a, ans in (("birth_city", "Lisbon"), ("employer", "Kestrel Rail"), ("birth_city", "Oslo"))]


def extract_rows() -> list[dict]:
    from harness.tasks.extract import extract_row

    return [extract_row("Delayed again #fail @united http://x.co", "negative"),
            extract_row("Great crew today @delta", "positive"), extract_row("Flight at noon", "neutral")]


EXTRACT_OUTPUTS = ['{"sentiment": "negative", "hashtags": ["#FAIL"], "mentions": [], "has_url": true}',
                   'Sure: {"sentiment": "positive", "hashtags": [], "mentions": ["@delta"], "has_url": false}',
                   "not json"]


def corpus_from_items(task, outputs: list[str], rows: list[dict], index: list[int] | None = None) -> tuple[float, float]:
    """(aggregate of the summed item stats, the task's own corpus score) on the rows picked by `index`."""
    index = list(range(len(rows))) if index is None else index
    _, stats = task.item_scores(outputs, rows)
    sums = np.sum([stats[i] for i in index], axis=0)
    picked = ([outputs[i] for i in index], [rows[i] for i in index])
    return items.aggregate(task.primary_metric, sums), task.score(*picked)[task.primary_metric]


@pytest.mark.parametrize("index", [None, [0, 0, 2, 3], [1]])  # the whole set and bootstrap-like resamples
def test_summed_item_stats_give_each_tasks_corpus_score(index, tmp_path: Path) -> None:
    cases = [(make_task("classify", tmp_path), CLASSIFY_OUTPUTS, CLASSIFY_ROWS),
             (make_task("style", tmp_path), STYLE_OUTPUTS, STYLE_ROWS),
             (make_task("extract", tmp_path), EXTRACT_OUTPUTS, extract_rows()),
             (make_task("knowledge", tmp_path), ["Lisbon.", "kestrel rail", "Paris"], KNOWLEDGE_ROWS)]
    checked = set()
    for task, outputs, rows in cases:
        picked = [i for i in (index or range(len(rows))) if i < len(rows)]
        from_items, corpus = corpus_from_items(task, outputs, rows, picked)
        assert from_items == pytest.approx(corpus, abs=1e-9), task.name
        checked.add(task.primary_metric)
    assert checked == {"accuracy", "sari", "field_accuracy", "exact_match"}
    # style's chrF, now a secondary figure, still gives its corpus stats through the same protocol, and there
    # it really is a corpus statistic: the mean of sentence scores differs from it
    chrf = make_task("style", tmp_path).score(STYLE_OUTPUTS, STYLE_ROWS, items_for="chrf")
    assert items.aggregate("chrf", np.sum(chrf["item_stats"], axis=0)) == pytest.approx(chrf["chrf"], abs=1e-9)
    assert abs(np.mean(chrf["item_scores"]) - chrf["chrf"]) > 0.01


@pytest.mark.parametrize("metric", ["exact_match", "contains", "chrf", "bleu"])
def test_custom_metrics_aggregate_to_the_corpus_score(metric: str, tmp_path: Path) -> None:
    task = custom_task(tmp_path, metric)
    rows = [{"input": "q1", "target": "the cat sat on the mat"}, {"input": "q2", "target": "Lisbon"},
            {"input": "q3", "target": "a b c d e f"}]
    outputs = ["the cat sat on a mat", "It is Lisbon", "a b c d e f"]
    for index in ([0, 1, 2], [2, 2, 0]):
        from_items, corpus = corpus_from_items(task, outputs, rows, index)
        assert from_items == pytest.approx(corpus, abs=1e-9)


@pytest.mark.parametrize("name", ["multitask", "instruct"])
def test_mixture_items_aggregate_to_the_mean_of_component_scores(name: str, tmp_path: Path) -> None:
    task = make_task(name, tmp_path)
    parts = {"classify": (CLASSIFY_ROWS[:3], CLASSIFY_OUTPUTS[:3]), "style": (STYLE_ROWS[:3], STYLE_OUTPUTS[:3]),
             "extract": (extract_rows(), EXTRACT_OUTPUTS), "knowledge": (KNOWLEDGE_ROWS, ["Lisbon", "x", "Oslo"])}
    assert set(task.components) == set(parts)
    rows, outputs = [], []
    for i in range(3):  # interleaved, as the mixture's splits are
        for component, (sub_rows, sub_outputs) in parts.items():
            rows.append({"task": component, "template": 0, "row": json.dumps(sub_rows[i], sort_keys=True)})
            outputs.append(sub_outputs[i])
    # every item; a resample that leaves style out (the mean is then over the other three, as the scorer does)
    for index in (None, [0, 0, 2, 3, 4, 6, 7, 8, 8], [3, 7, 11]):
        from_items, corpus = corpus_from_items(task, outputs, rows, index)
        assert from_items == pytest.approx(corpus, abs=1e-9), index
    scores, _ = task.item_scores(outputs, rows)
    assert scores[0] == 1.0 and scores[3] == 1.0 and scores[7] == 0.0  # the components' own item scores


def test_macro_f1_from_a_summed_confusion_matrix() -> None:
    labels = ["negative", "neutral", "positive"]
    refs = ["positive", "negative", "neutral", "positive", "neutral", "negative"]
    preds = ["positive", "neutral", "", "negative", "neutral", "negative"]
    result = load_metric("classification").compute(predictions=preds, references=refs, labels=labels,
                                                    items_for="macro_f1")
    for index in (range(6), [0, 0, 1, 4], [2]):  # the last: no label predicted correctly, every F1 is 0
        sums = np.sum([result["item_stats"][i] for i in index], axis=0)
        expected = f1_score([refs[i] for i in index], [preds[i] for i in index], labels=labels, average="macro",
                            zero_division=0)
        assert items.aggregate("macro_f1", sums) == pytest.approx(expected, abs=1e-12)


# ---- floors ----

def test_classify_floor_is_the_majority_of_the_training_labels(tmp_path: Path) -> None:
    task = make_task("classify", tmp_path)
    train = [tweet("a", "neutral"), tweet("b", "negative"), tweet("c", "negative"), tweet("d", "positive")]
    floor = task.floors(train)["majority"]
    assert floor(CLASSIFY_ROWS) == ["negative"] * len(CLASSIFY_ROWS)
    assert task.score(floor(CLASSIFY_ROWS), CLASSIFY_ROWS)["accuracy"] == pytest.approx(1 / 5)
    tie = [tweet("a", "positive"), tweet("b", "neutral")]
    assert task.floors(tie)["majority"](CLASSIFY_ROWS[:1]) == ["neutral"]  # ties: alphabetically first
    assert task.floors(list(reversed(tie)))["majority"](CLASSIFY_ROWS[:1]) == ["neutral"]  # whatever the order
    # any label set: read from the rows, not the built-in labels
    assert task.floors([tweet("x", "spam"), tweet("y", "spam"), tweet("z", "ham")])["majority"]([{}]) == ["spam"]
    assert majority([]) == ""


def test_style_floor_copies_the_source_and_scores_its_sari(tmp_path: Path) -> None:
    task = make_task("style", tmp_path)
    copied = task.floors([])["copy"](STYLE_ROWS)
    assert copied == [r["source"] for r in STYLE_ROWS]
    sources, targets = [r["source"] for r in STYLE_ROWS], [[r["target"]] for r in STYLE_ROWS]
    expected = load_metric("sari").compute(sources=sources, predictions=copied, references=targets)
    metrics, records = task.scored_items(copied, STYLE_ROWS, keep_pred=False)
    assert metrics["sari"] == pytest.approx(expected["sari"], abs=1e-12) and metrics["sari"] == metrics["copy_sari"]
    # a copy adds nothing the KJV adds and deletes nothing (HF's 0/0 = 1): its floor is the keep part alone
    assert metrics["sari_add"] == 0.0 and metrics["sari_delete"] == 1.0 and 0.3 < metrics["sari"] < 0.7
    assert metrics["sari"] == pytest.approx((metrics["sari_keep"] + 1.0) / 3)
    assert np.mean([r["score"] for r in records]) == pytest.approx(metrics["sari"]) and records[0]["stats"][1] == 1.0
    # chrF and its copy figure stay as secondary metrics
    chrf = sacrebleu.corpus_chrf(copied, [[r["target"] for r in STYLE_ROWS]]).score / 100
    assert metrics["chrf"] == pytest.approx(chrf, abs=1e-12) and metrics["chrf"] == metrics["copy_chrf"]


def test_extract_floor_answers_the_most_frequent_value_of_each_field(tmp_path: Path) -> None:
    from harness.tasks.extract import extract_row

    task = make_task("extract", tmp_path)
    train = [extract_row("so bad #fail", "negative"), extract_row("bad @united", "negative"),
             extract_row("fine www.x.com", "positive"), extract_row("again", "neutral")]
    (answer,) = task.floors(train)["majority"](extract_rows()[:1])
    assert json.loads(answer) == {"sentiment": "negative", "hashtags": [], "mentions": [], "has_url": False}
    # the rows: negative with #fail @united and a URL (1 of 4 fields right); positive with @delta (2); neutral (3)
    assert task.score([answer] * 3, extract_rows())["field_accuracy"] == pytest.approx((1 + 2 + 3) / 12)


def test_knowledge_floor_answers_the_commonest_training_value_per_attribute(tmp_path: Path) -> None:
    task = make_task("knowledge", tmp_path)
    train = [{"kind": "qa", "attribute": "birth_city", "answer": c} for c in ("Oslo", "Oslo", "Cork")]
    train += [{"kind": "bio", "attribute": "", "answer": "Oslo Oslo"}, {"kind": "qa", "attribute": "employer", "answer": "Kestrel Rail"}]
    answers = task.floors(train)["majority"](KNOWLEDGE_ROWS)
    assert answers == ["Oslo", "Kestrel Rail", "Oslo"]
    assert task.score(answers, KNOWLEDGE_ROWS)["exact_match"] == pytest.approx(2 / 3)


def test_custom_and_mixture_floors(tmp_path: Path) -> None:
    task = custom_task(tmp_path, "chrf")
    floors = task.floors([{"input": "a", "target": "yes"}, {"input": "b", "target": "yes"}, {"input": "c", "target": "no"}])
    assert floors["majority"]([{"input": "q"}] * 2) == ["yes", "yes"] and floors["copy"]([{"input": "q"}]) == ["q"]
    assert set(custom_task(tmp_path / "em", "exact_match").floors([])) == {"majority"}
    mix = make_task("multitask", tmp_path)
    pack = lambda name, row: {"task": name, "template": 0, "row": json.dumps(row)}  # noqa: E731
    train = [pack("classify", tweet("a", "neutral")), pack("style", STYLE_ROWS[0])]
    evaluation = [pack("style", STYLE_ROWS[1]), pack("classify", CLASSIFY_ROWS[0])]
    assert mix.floors(train)["per-task"](evaluation) == [STYLE_ROWS[1]["source"], "neutral"]


def test_the_floor_is_chosen_on_validation_among_the_floors_and_the_untuned_model() -> None:
    floors = {"majority": {"validation": 0.34, "test": 0.30}, "copy": {"validation": 0.34, "test": 0.5}}
    assert items.choose_floor(floors, base_val=0.2, base_test=0.9) == {
        "floor_name": "majority", "floor_score": 0.30, "floor_val_score": 0.34}  # test is never looked at; ties: first
    assert items.choose_floor(floors, base_val=0.4, base_test=0.1)["floor_name"] == "base"
    assert items.choose_floor({}, base_val=0.4, base_test=0.1)["floor_score"] == 0.1
    assert items.floor_who("base") == "base" and items.floor_who("copy") == "floor:copy"


# ---- runs ----

def check_items(run_dir: Path, result: dict, n_eval: int) -> list[dict]:
    """The run's items file: tuned/base/floor rows on both splits, the same ids for each, scores that add up."""
    assert result["items_file"] == items.ITEMS_FILE
    rows = items.read_items(run_dir)
    whos = {"tuned", "base", *(items.floor_who(n) for n in result["floors"])}
    assert len(whos) >= 3 and {r["who"] for r in rows} == whos
    for split in items.SPLITS:
        ids = {who: [r["id"] for r in rows if r["split"] == split and r["who"] == who] for who in whos}
        assert len(ids["tuned"]) == n_eval and all(sorted(v) == sorted(ids["tuned"]) for v in ids.values()), split
    sums: dict = {}
    for r in rows:
        sums[(r["split"], r["who"])] = sums.get((r["split"], r["who"]), 0) + np.asarray(r["stats"], dtype=float)
    metric = result["primary_metric"]
    expected = {("test", "tuned"): result["score"], ("validation", "tuned"): result["val_score"],
                ("test", "base"): result["base_score"], ("validation", "base"): result["base_val_score"]}
    expected |= {(s, items.floor_who(n)): v[s] for n, v in result["floors"].items() for s in items.SPLITS}
    assert set(expected) == set(sums)
    for key, value in expected.items():
        assert items.aggregate(metric, sums[key]) == pytest.approx(value, abs=1e-9), key
    chosen = result["floors"].get(result["floor_name"], {"validation": result["base_val_score"], "test": result["base_score"]})
    assert (result["floor_val_score"], result["floor_score"]) == (chosen["validation"], chosen["test"])
    return rows


@pytest.mark.parametrize("model", ["tiny-llama", "tiny-bert"])
def test_a_run_writes_items_for_tuned_base_and_floors_also_from_a_warm_base_cache(model: str, runs: Path,
                                                                                tmp_path: Path) -> None:
    base = [f"model={model}", "method=full", *TINY, f"paths.base_scores={tmp_path / 'base'}"]
    first, first_dir = run_inprocess([*base, "train.lr=1e-3"], runs)
    second, second_dir = run_inprocess([*base, "train.lr=3e-3"], runs)  # same cell: the untuned scores are cached
    assert first["status"] == second["status"] == "ok"
    assert (first["base_cached"], second["base_cached"]) == (False, True)
    rows = [check_items(d, r, n_eval=8) for d, r in ((first_dir, first), (second_dir, second))]
    base_rows = [[r for r in rs if r["who"] == "base"] for rs in rows]
    assert base_rows[0] == base_rows[1]  # the cache gave back the very same per-item rows
    assert set(first["floors"]) == {"majority"} and first["floor_name"] in ("majority", "base")
    preds = {r["pred"] for r in rows[0] if r["who"] == "tuned"}
    assert preds <= {"negative", "neutral", "positive", ""}  # classify keeps the label named, not the answer
    assert all(r["pred"] is None for r in rows[0] if r["who"].startswith(items.FLOOR_PREFIX))
    cached = json.loads(next((tmp_path / "base").glob("*.json")).read_text())
    assert "base_items" in cached["scores"] and "base_items" not in first


def test_a_base_cache_entry_without_items_is_recomputed(tmp_path: Path) -> None:
    from harness.base_scores import cached_base_scores

    (tmp_path / "k.json").write_text(json.dumps({"key": "k", "scores": {"base_metrics": {}}}))  # an older entry
    calls = []
    compute = lambda: calls.append(1) or {"base_metrics": {}, "base_items": {}}  # noqa: E731
    assert cached_base_scores(tmp_path, "k", compute, required=("base_items",)) == ({"base_metrics": {}, "base_items": {}}, False)
    assert cached_base_scores(tmp_path, "k", compute, required=("base_items",))[1] is True and len(calls) == 1


def test_records_copy_the_items_file(tmp_path: Path) -> None:
    from analysis.records import copy_records

    run = tmp_path / "runs" / "sweep" / "run-a"
    run.mkdir(parents=True)
    (run / "result.json").write_text("{}")
    items.write_items(run, [{"split": "test", "who": "tuned", "id": "x", "score": 1.0, "pred": None, "stats": [1, 1]}])
    (run / "adapter").mkdir()
    assert copy_records(tmp_path / "runs", tmp_path / "results") == 1
    copied = tmp_path / "results" / "sweep" / "run-a"
    assert items.read_items(copied) == items.read_items(run) and not (copied / "adapter").exists()
    with gzip.open(copied / items.ITEMS_FILE, "rt") as fh:
        assert json.loads(fh.readline())["id"] == "x"
