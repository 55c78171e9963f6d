"""Task `memorize` (claim 18's capacity stand-in): random labels drawn by a seeded RNG, scored on the training rows;
the classification head stays frozen in every method, so the body alone stores the labels."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import pytest
from omegaconf import OmegaConf

from conftest import TINY, run_inprocess
from harness.tasks import CONF_TASK_DIR, get_task


def cfg(**overrides):
    return OmegaConf.merge(OmegaConf.load(CONF_TASK_DIR / "memorize.yaml"), overrides)


def test_scored_rows_are_the_training_rows_with_seeded_random_labels(tmp_path: Path) -> None:
    task = get_task(cfg(n_train=200), tmp_path)
    data = task.splits()
    assert len(data["train"]) == 200 and list(data["test"]) == list(data["train"]) == list(data["validation"])
    counts = Counter(r["label"] for r in data["train"])
    assert set(counts) == {"c0", "c1", "c2", "c3"} and max(counts.values()) < 80  # ~50 each, drawn at random
    assert get_task(cfg(n_train=200, n_eval=50), tmp_path).splits()["test"]["text"] == data["train"]["text"][:50]
    relabelled = get_task(cfg(n_train=200, label_seed=1), tmp_path).splits()["train"]
    assert relabelled["text"] == data["train"]["text"] and relabelled["label"] != data["train"]["label"]
    again = get_task(cfg(n_train=200), tmp_path / "other")
    assert again.fingerprint() == task.fingerprint()


def test_a_single_class_is_refused(tmp_path: Path) -> None:
    from harness.errors import ConfigError

    with pytest.raises(ConfigError, match="n_classes=1 must be at least 2"):
        get_task(cfg(n_classes=1), tmp_path)


@pytest.mark.parametrize("method", ["full", "lora"])
def test_the_head_is_frozen_and_one_class_answers_are_a_result(method: str, runs: Path) -> None:
    result, _ = run_inprocess(["task=memorize", "model=tiny-bert", f"method={method}", "r=4", *TINY,
                               "task.n_train=16"], runs)
    head = 64 * 4 + 4  # tiny-bert's hidden size x 4 classes + bias
    assert result["status"] == "ok", result.get("reason")  # a run that stored nothing is chance, not `collapsed`
    if method == "full":
        assert result["params_trainable"] == result["params_total"] - head
    else:  # LoRA on q,v of 2 layers: r x (64 + 64) each; no head (peft's modules_to_save copy frozen)
        assert result["params_trainable"] == 2 * 2 * 4 * (64 + 64)
