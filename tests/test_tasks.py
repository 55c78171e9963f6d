"""Task data: deterministic, byte-identical, disjoint splits for every task; user data through task.source=files|hub
with one-line errors; chat-template prompts; tiny-model runs through the new tasks."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest
from omegaconf import OmegaConf

from conftest import TINY, run_cli, run_inprocess
from harness.assets import cache_dir
from harness.errors import AssetError, ConfigError
from harness.tasks import CONF_TASK_DIR, get_task
from harness import items
from harness.tasks.base import SPLITS
from harness.tasks.classify import LABELS
from harness.tasks.extract import expected_fields
from harness.tasks.style import clean_osis

BUILTIN = ["classify", "style", "extract", "knowledge", "multitask", "instruct"]


def task_cfg(name: str, **overrides):
    return OmegaConf.merge(OmegaConf.load(CONF_TASK_DIR / f"{name}.yaml"), overrides)


@pytest.fixture(scope="module")
def caches(tmp_path_factory) -> list[Path]:
    """Two empty caches that share only the extracted Bibles (extracting them takes minutes; it is tested apart)."""
    from harness.tasks.style import aligned_verses

    aligned_verses(cache_dir())  # extracted once into the real cache (make setup does it too)
    out = []
    for i in range(2):
        cache = tmp_path_factory.mktemp(f"cache{i}")
        (cache / "raw").symlink_to(cache_dir() / "raw")
        out.append(cache)
    return out


def key(name: str, row: dict) -> str:
    """What must never appear in two splits: the tweet, the verse, the (person, attribute) asked, the mixed-in row."""
    if name in ("classify", "extract"):
        return row["text"]
    if name == "style":
        return row["ref"]
    if name == "knowledge":
        return row["question"] if row["kind"] == "qa" else f"bio|{row['answer']}"  # facts recur by design
    return f"{row['task']}|{key(row['task'], json.loads(row['row']))}"


@pytest.mark.parametrize("name", BUILTIN)
def test_prepare_twice_gives_byte_identical_splits(name: str, caches: list[Path]) -> None:
    first, second = (get_task(task_cfg(name), c) for c in caches)
    a, b = first.prepare(), second.prepare()
    assert a != b
    for split in SPLITS:
        assert (a / f"{split}.jsonl").read_bytes() == (b / f"{split}.jsonl").read_bytes(), split
        assert (a / f"{split}.jsonl").stat().st_size > 0
    assert first.fingerprint() == second.fingerprint()


@pytest.mark.parametrize("name", BUILTIN)
def test_splits_are_disjoint(name: str, caches: list[Path]) -> None:
    task = get_task(task_cfg(name), caches[0])
    keys = {s: [key(name, r) for r in task.read_split(s)] for s in SPLITS}
    for split, values in keys.items():
        assert len(values) == len(set(values)), f"duplicate rows in {split}"
    assert not set(keys["train"]) & set(keys["test"])
    assert not set(keys["train"]) & set(keys["validation"])
    assert not set(keys["validation"]) & set(keys["test"])


@pytest.mark.parametrize("name", ["style", "classify", "knowledge", "instruct"])
def test_data_seed_changes_the_split(name: str, caches: list[Path]) -> None:
    base = get_task(task_cfg(name), caches[0]).read_split("test")
    other = get_task(task_cfg(name, data_seed=7), caches[0]).read_split("test")
    assert base != other


def test_sizes_take_prefixes(caches: list[Path]) -> None:
    task = get_task(task_cfg("style", n_train=50, n_eval=7), caches[0])
    data = task.splits()
    assert (len(data["train"]), len(data["validation"]), len(data["test"])) == (50, 7, 7)
    assert list(data["test"]) == task.read_split("test")[:7]


def test_style_pairs_modern_and_king_james_by_chapter(caches: list[Path]) -> None:
    task = get_task(task_cfg("style"), caches[0])
    chapters = {s: {r["ref"].split(":")[0] for r in task.read_split(s)} for s in SPLITS}
    assert not chapters["train"] & chapters["test"] and not chapters["validation"] & chapters["test"]
    test = task.read_split("test")
    assert all(r["source"] and r["target"] and max(len(r["source"]), len(r["target"])) <= 250 for r in test)
    genesis = next(r for s in SPLITS for r in task.read_split(s) if r["ref"] == "Gen 1:1")
    assert genesis["target"] == "In the beginning God created the heaven and the earth."
    assert genesis["source"] == "In the beginning, God created the heavens and the earth."


def test_clean_osis_drops_notes_without_gluing_words() -> None:
    raw = ('<w lemma="x">God</w><note placement="foot"><reference>1:1 </reference>Elohim.</note><w>created</w> '
           '<title>A Psalm.</title>the <transChange type="added">earth</transChange> .')
    assert clean_osis(raw) == "God created the earth."


def test_extract_targets_follow_the_tweet() -> None:
    text = "@united lost my bag again #fail #NeverAgain see https://t.co/x cc @helpdesk, mail me a@b.com"
    assert expected_fields(text, "negative") == {
        "sentiment": "negative", "hashtags": ["#fail", "#NeverAgain"], "mentions": ["@united", "@helpdesk"], "has_url": True}
    assert expected_fields("no links here", "neutral")["has_url"] is False


def test_extract_and_classify_test_on_the_same_tweets(caches: list[Path]) -> None:
    texts = {n: {r["text"] for r in get_task(task_cfg(n), caches[0]).read_split(s)} for n in ("classify", "extract") for s in ("test",)}
    train = {r["text"] for r in get_task(task_cfg("classify"), caches[0]).read_split("train")}
    assert texts["classify"] == texts["extract"]
    assert not texts["extract"] & train


def test_knowledge_asks_trained_facts_in_unseen_phrasings(caches: list[Path]) -> None:
    from harness.tasks.knowledge import QUESTIONS

    task = get_task(task_cfg("knowledge", n_people=20), caches[0])
    train, validation, test = (task.read_split(s) for s in SPLITS)
    bios = [r for r in train if r["kind"] == "bio"]
    assert len(bios) == 20 * 4 and len(train) == 20 * (4 + 5 * 2)
    assert (len(validation), len(test)) == (20 * 2, 20 * 3)
    facts = {s: {(r["name"], r["attribute"]) for r in rows if r["kind"] == "qa"} for s, rows in zip(SPLITS, (train, validation, test))}
    assert facts["test"] <= facts["train"] and facts["validation"] <= facts["train"]
    assert not facts["test"] & facts["validation"]
    eval_phrasings = {q[-1].split("{name}")[0] for q in QUESTIONS.values()}
    assert all(any(r["question"].startswith(p) for p in eval_phrasings) for r in test)
    assert not {r["question"] for r in train} & {r["question"] for r in test}
    for row in test:  # the answer is stated in every biography of the person
        assert all(row["answer"] in b["answer"] for b in bios if b["name"] == row["name"]), row
    with pytest.raises(ConfigError, match="n_people"):
        get_task(task_cfg("knowledge", n_people=10**6), caches[0]).prepare()


def test_knowledge_heldout_facts_are_stated_only_in_biographies(caches: list[Path]) -> None:
    task = get_task(task_cfg("knowledge", n_people=20, heldout="fact"), caches[0])
    train, test = task.read_split("train"), task.read_split("test")
    assert len(train) == 20 * (4 + 2 * 2) and len(test) == 20 * 2
    asked = {(r["name"], r["attribute"]) for r in train if r["kind"] == "qa"}
    assert not asked & {(r["name"], r["attribute"]) for r in test}
    for row in test:
        assert any(row["answer"] in r["answer"] for r in train if r["kind"] == "bio" and r["name"] == row["name"])


def test_instruct_holds_templates_out_and_reuses_component_test_rows(caches: list[Path]) -> None:
    task = get_task(task_cfg("instruct"), caches[0])
    assert {r["template"] for r in task.read_split("train")} == {0, 1, 2}
    assert {r["template"] for r in task.read_split("test")} == {3, 4}
    data = task.splits()
    assert {r["task"] for r in data["test"]} == {"style", "classify", "extract", "knowledge"}
    counts = [sum(r["task"] == t for r in data["test"]) for t in ("style", "classify", "extract", "knowledge")]
    assert max(counts) - min(counts) <= 1  # balanced prefix
    for name, component in task.components.items():
        mixed = [json.loads(r["row"]) for r in task.read_split("test") if r["task"] == name]
        assert mixed == component.read_split("test")
    seen = {task.messages(r)[0]["content"].split("\n")[0][:30] for r in data["test"] if r["task"] == "classify"}
    trained = {task.components["classify"].templates[i].split("\n")[0][:30] for i in (0, 1, 2)}
    assert seen and not seen & trained


def test_chat_template_prompt_and_loss_on_the_answer_only(caches: list[Path]) -> None:
    from harness.models import load_tokenizer

    tokenizer = load_tokenizer(OmegaConf.load(CONF_TASK_DIR.parent / "model" / "tiny-llama.yaml"), cache_dir())
    task = get_task(task_cfg("knowledge"), caches[0])
    row = task.read_split("test")[0]
    prompt = tokenizer.decode(task.prompt_ids(tokenizer, row))
    assert "<|im_start|>user" in prompt and row["question"] in prompt and prompt.endswith("<|im_start|>assistant\n")
    features = task.causal_features(tokenizer, 256)(row)
    answer = [t for t in features["labels"] if t != -100]
    assert tokenizer.decode(answer) == row["answer"] + tokenizer.eos_token
    assert features["input_ids"][-len(answer):] == answer


# ---- task.source=files | hub ----

def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def test_files_source_maps_fields_and_splits_deterministically(tmp_path: Path) -> None:
    rows = [{"tweet": f"tweet number {i}", "mood": ["Positive", "negative", "neutral"][i % 3]} for i in range(60)]
    data = write_jsonl(tmp_path / "tweets.jsonl", rows + rows[:5])  # duplicates are dropped, never split apart
    cfg = task_cfg("classify", source="files", path=str(data), fields={"text": "tweet", "label": "mood"})
    task = get_task(cfg, tmp_path / "c1")
    pools = {s: task.read_split(s) for s in SPLITS}
    assert [len(pools[s]) for s in SPLITS] == [48, 6, 6]
    texts = {s: {r["text"] for r in pools[s]} for s in SPLITS}
    assert not texts["train"] & texts["test"] and not texts["validation"] & texts["test"]
    assert pools["test"][0]["label"] in ("Positive", "negative", "neutral")  # the user's labels, as written
    again = get_task(cfg, tmp_path / "c2")
    assert again.fingerprint() == task.fingerprint()


def test_files_source_reads_csv_with_its_own_splits(tmp_path: Path) -> None:
    for split, n in (("train", 20), ("test", 4)):
        lines = ["modern,old"] + [f"you are {split} {i},thou art {split} {i}" for i in range(n)]
        (tmp_path / f"{split}.csv").write_text("\n".join(lines) + "\n")
    paths = {"train": str(tmp_path / "train.csv"), "test": str(tmp_path / "test.csv")}
    cfg = task_cfg("style", source="files", path=paths, fields={"source": "modern", "target": "old"})
    pools = {s: get_task(cfg, tmp_path / "c").read_split(s) for s in SPLITS}
    assert [len(pools[s]) for s in SPLITS] == [18, 2, 4]  # validation carved from train, test as given
    assert {r["source"] for r in pools["test"]} == {f"you are test {i}" for i in range(4)}
    assert pools["train"][0]["target"].startswith("thou art")


@pytest.mark.parametrize(("rows", "fields", "message"), [
    ([{"tweet": "hi", "mood": "positive"}], {"text": "body", "label": "mood"}, "lacks text \\(column 'body'\\)"),
    ([{"tweet": "hi", "mood": "positive"}, {"tweet": " ", "mood": "neutral"}], {"text": "tweet", "label": "mood"}, "row 1 has an empty text"),
    ([{"tweet": f"hi {i}", "mood": "happy"} for i in range(20)], {"text": "tweet", "label": "mood"}, "hold one label \\('happy'\\)"),
    ([{"tweet": "hi", "mood": "positive"}], {"txt": "tweet"}, "does not use"),
])
def test_files_source_errors_are_one_line(tmp_path: Path, rows, fields, message) -> None:
    data = write_jsonl(tmp_path / "d.jsonl", rows)
    with pytest.raises(ConfigError, match=message) as err:
        get_task(task_cfg("classify", source="files", path=str(data), fields=fields), tmp_path).prepare()
    assert "\n" not in str(err.value)


def test_source_settings_are_checked_when_the_task_is_made(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="needs task.path"):
        get_task(task_cfg("classify", source="files"), tmp_path)
    with pytest.raises(ConfigError, match="does not exist"):
        get_task(task_cfg("classify", source="files", path=str(tmp_path / "nope.jsonl")), tmp_path)
    with pytest.raises(ConfigError, match="needs task.dataset"):
        get_task(task_cfg("style", source="hub"), tmp_path)
    with pytest.raises(ConfigError, match="makes its own data"):
        get_task(task_cfg("knowledge", source="files", path=__file__), tmp_path)
    with pytest.raises(ConfigError, match="task.source=files"):
        get_task(task_cfg("custom", source="builtin"), tmp_path)


def test_hub_source_fails_fast_offline(tmp_path: Path) -> None:
    start = time.perf_counter()
    with pytest.raises(AssetError, match="not available") as err:
        get_task(task_cfg("classify", source="hub", dataset="nobody/no-such-dataset"), tmp_path).prepare()
    assert time.perf_counter() - start < 20 and "\n" not in str(err.value)


def test_hub_source_fails_fast_when_unreachable(tmp_path: Path, monkeypatch) -> None:
    for var in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("HF_ENDPOINT", "http://127.0.0.1:9")  # nothing listens there
    start = time.perf_counter()
    with pytest.raises(AssetError, match="unreachable"):
        get_task(task_cfg("classify", source="hub", dataset="nobody/no-such-dataset"), tmp_path).prepare()
    assert time.perf_counter() - start < 10


def test_cli_reports_a_task_source_error_in_one_line(tmp_path: Path) -> None:
    proc = run_cli(["task=custom", "model=tiny-llama", "tracking=none", f"paths.runs={tmp_path}"], timeout=300)
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines()[-1].startswith("error: task.source=files needs task.path")


# ---- tiny-model runs through the new tasks ----

@pytest.mark.parametrize("task", ["style", "instruct"])
def test_tiny_run_on_new_task_records_scores_and_forgetting(task: str, runs: Path) -> None:
    result, _ = run_inprocess([f"task={task}", "model=tiny-llama", *TINY, "task.n_eval=4"], runs)
    assert result["status"] == "ok" and 0 <= result["score"] <= 1 and 0 <= result["base_score"] <= 1
    assert result["primary_metric"] == {"style": "sari", "instruct": "mean_score"}[task]
    assert 0 < result["forgetting_before"] < 20 and 0 < result["forgetting_after"] < 20
    assert result["forgetting"] == pytest.approx(result["forgetting_after"] - result["forgetting_before"])
    if task == "style":
        assert 0 < result["metrics"]["copy_sari"] < 1 and 0 < result["metrics"]["copy_chrf"] < 1
        assert {"sari_add", "chrf"} <= set(result["metrics"])
    else:
        assert {"style/sari", "style/chrf", "classify/accuracy", "extract/field_accuracy", "knowledge/exact_match"} <= set(result["metrics"])


def test_tiny_run_on_custom_files(tmp_path: Path, runs: Path) -> None:
    data = write_jsonl(tmp_path / "qa.jsonl", [{"q": f"What is {i} plus {i}?", "a": str(2 * i)} for i in range(40)])
    result, _ = run_inprocess(["task=custom", f"task.path={data}", "task.fields={input: q, target: a}",
                               "task.metric=exact_match", "model=tiny-llama", *TINY], runs)
    assert result["status"] == "ok" and result["primary_metric"] == "exact_match" and result["score"] == 0.0
    assert result["samples"][0]["input"].startswith("What is")


# ---- classify by label log-likelihood (task.answer=loglik) ----

def brute_force_logprobs(model, tokenizer, task, rows: list[dict], choices: list[str]):
    """Each (row, choice) alone, unpadded, one full forward pass: the summed log-probability of the choice's tokens."""
    import torch

    totals = torch.zeros(len(rows), len(choices), dtype=torch.float64)
    with torch.no_grad():
        for r, row in enumerate(rows):
            prompt = task.prompt_ids(tokenizer, row)
            for k, choice in enumerate(choices):
                tokens = tokenizer(choice, add_special_tokens=False)["input_ids"]
                logits = model(input_ids=torch.tensor([prompt + tokens])).logits[0].float()
                logprobs = torch.log_softmax(logits[len(prompt) - 1:-1], dim=-1)
                totals[r, k] = logprobs.gather(1, torch.tensor(tokens).unsqueeze(1)).sum().item()
    return totals


@pytest.fixture(scope="module")
def tiny_classify():
    from benchmarks.eval_bench import scoring_setup

    model, tokenizer, task, test = scoring_setup("tiny-llama", "classify", 6, "fp32")
    return model, tokenizer, task, list(test)


@pytest.mark.parametrize("batch_size, share_prefix", [(1, False), (4, True), (16, True)])
def test_choice_logprobs_equal_each_choice_scored_alone(tiny_classify, batch_size: int, share_prefix: bool) -> None:
    """Multi-token choices, two sharing a first token (so they need separate passes), single-token ones sharing
    one pass: batched, padded, with or without the shared-prefix cache, the sums are those of each pair alone."""
    from harness.tasks.generation import choice_inputs

    model, tokenizer, task, rows = tiny_classify
    choices = ["positive", "positive feelings", "neutral tone here", "negative", "mixed"]
    tokens = [tokenizer(c, add_special_tokens=False)["input_ids"] for c in choices]
    assert tokens[0] == tokens[1][:1] and len(tokens[2]) > 2 and len(tokens[3]) == len(tokens[4]) == 1
    inputs, scored = choice_inputs([task.prompt_ids(tokenizer, r) for r in rows], tokens)
    assert len(inputs) == 3 * len(rows)  # per row: the single-token choices share one input
    expected = brute_force_logprobs(model, tokenizer, task, rows, choices)
    got = task.choice_logprobs(model, tokenizer, rows, choices, batch_size, 512, share_prefix=share_prefix)
    assert torch_allclose(got, expected)
    answers = task.choice_answers(model, tokenizer, rows, choices, batch_size, 512, share_prefix=share_prefix)
    assert answers == [choices[int(i)] for i in expected.argmax(dim=1)]


def torch_allclose(a, b) -> bool:
    import torch

    return bool(torch.allclose(a, b, atol=1e-4, rtol=0))


def test_loglik_picks_the_label_the_model_scores_highest(tiny_classify) -> None:
    """A constructed case: a bias added to the output logits makes one label's token the model's clear favourite
    at every position, and loglik answers that label for every row, whichever label it is (unbiased, this random
    model prefers "positive" on every row, so the other two labels come from the bias alone)."""
    import torch

    model, tokenizer, _, rows = tiny_classify
    task = get_task(task_cfg("classify", n_eval=6, answer="loglik"), cache_dir())
    split = task.splits()["test"]
    for favourite in task.labels:
        bias = torch.zeros(model.config.vocab_size)
        bias[tokenizer(favourite, add_special_tokens=False)["input_ids"]] = 30.0
        hook = model.lm_head.register_forward_hook(lambda module, args, out: out + bias)
        try:
            answers = task.predict(model, tokenizer, split, "causal_lm", batch_size=4, max_len=512)
        finally:
            hook.remove()
        assert answers == [favourite] * len(split)
        assert task.score(answers, list(split))["answered_rate"] == 1.0


def test_answer_mode_is_checked_when_the_task_is_made(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="task.answer must be one of generate, loglik, got 'logprob'"):
        get_task(task_cfg("classify", answer="logprob"), tmp_path)
    assert get_task(task_cfg("classify"), tmp_path).answer_mode == "generate"


def test_tiny_run_on_classify_by_loglik(runs: Path) -> None:
    """Through the whole pipeline: the untuned and the tuned model answer by label log-likelihood, so every
    answer names a label, and the record says how they answered."""
    result, run_dir = run_inprocess(["task=classify", "task.answer=loglik", "model=tiny-llama", *TINY], runs)
    assert result["status"] == "ok" and result["config"]["task"]["answer"] == "loglik"
    assert result["metrics"]["answered_rate"] == 1.0 and result["base_metrics"]["answered_rate"] == 1.0
    assert {r["pred"] for r in items.read_items(run_dir) if r["who"] in ("base", "tuned")} <= set(LABELS)


@pytest.mark.slow
def test_bundled_model_generation_and_loglik_agree_on_classify_validation() -> None:
    """On smollm2-135m (untuned, fp32), where generation names a label, the label loglik scores highest is the
    same one on at least 90% of classify's validation prompts (measured 92 of 98, 2026-12-06), and loglik is
    at least as accurate. Over all prompts they agree far less (0.61): the untuned model's greedy answer
    often names no label ("The sentiment of this", 51 of 150), where loglik still picks one."""
    from benchmarks.eval_bench import scoring_setup

    model, tokenizer, task, _ = scoring_setup("smollm2-135m", "classify", 150, "fp32")
    validation = task.splits()["validation"]
    truth = [r["label"] for r in validation]
    generated = [task.predicted_label(a) for a in task.predict(model, tokenizer, validation, "causal_lm", 32, 256)]
    loglik = task.choice_answers(model, tokenizer, list(validation), list(task.labels), 32, 256)
    named = [i for i, label in enumerate(generated) if label]
    agree = sum(generated[i] == loglik[i] for i in named) / len(named)
    assert len(named) >= 50 and agree >= 0.9, f"agree on {agree:.0%} of the {len(named)} prompts generation labels"
    accuracy = [sum(a == t for a, t in zip(answers, truth)) for answers in (generated, loglik)]
    assert accuracy[1] >= accuracy[0]
