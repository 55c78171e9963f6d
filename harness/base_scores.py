"""The untuned model's scores, computed once per cell and reused by every run that starts from the same weights.

Every run of a sweep scores the same untuned model on the same splits: the seeds and learning rates of one
variant, and every method that loads the base alike. The scores are stored under
`paths.base_scores/<key>.json` (default `<cache>/base-scores/`), where the key hashes everything they depend on: the weights' fingerprint, how
they were loaded (precision, quantisation), the data fingerprint and task config, the evaluation settings, the
scoring code and the library versions. For encoders the key also holds the seed: their classification head is
freshly initialised from it. Written atomically, so parallel launchers at worst compute a key twice.

An entry also holds the untuned model's per-item records (`base_items`: {split: [{id, score, stats, pred}]},
harness/items.py), so a run served from the cache still writes its base rows; `ENTRY_VERSION` is in the key and
an entry without a field the caller requires counts as a miss, so entries written before are recomputed.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

from harness.results import read_json, write_json_atomic

HARNESS_DIR = Path(__file__).resolve().parent
# The code whose change changes a base score (the task modules, the metric modules, the probe).
SCORING_SOURCES = ("tasks/*.py", "metrics/*/*.py", "forgetting.py", "base_scores.py", "items.py")
ENTRY_VERSION = 2  # 2: entries hold `base_items`


def scoring_code_hash(folder: Path = HARNESS_DIR) -> str:
    digest = hashlib.sha256()
    for pattern in SCORING_SOURCES:
        for path in sorted(folder.glob(pattern)):
            digest.update(path.name.encode())
            digest.update(path.read_bytes())
    return digest.hexdigest()[:16]


# Taken once, when the scoring code is imported, so it names the code this process runs: read at every run, a
# sweep process whose files were edited mid-sweep would store scores of the old code under the new code's key.
SCORING_CODE = scoring_code_hash()


def base_key(eff: dict[str, Any], model_fingerprint: str, data_fingerprint: str, versions: dict[str, Any]) -> str:
    train = eff["train"]
    key = {
        "model": model_fingerprint, "model_config": eff["model"], "precision": train["precision"],
        "quantization": eff["method"].get("quantization"), "data": data_fingerprint, "task": eff["task"],
        "eval": {k: train.get(k) for k in ("eval_batch_size", "max_seq_len")},
        "seed": eff["seed"] if eff["model"].get("kind") != "causal_lm" else None,
        "code": SCORING_CODE, "entry": ENTRY_VERSION, "versions": {k: versions.get(k) for k in ("torch", "transformers", "peft", "bitsandbytes")},
    }
    if eff.get("init_from"):  # a continual stage's untuned model is its parent's trained one
        key["init_from"] = eff["init_from"]
    return hashlib.sha256(json.dumps(key, sort_keys=True, default=str).encode()).hexdigest()[:20]


def cached_base_scores(folder: Path, key: str, compute: Callable[[], dict[str, Any]],
                       required: tuple[str, ...] = ()) -> tuple[dict[str, Any], bool]:
    """(scores, whether they came from the cache); `compute` runs only on a miss, which an entry lacking any of
    the `required` fields is too."""
    path = Path(folder) / f"{key}.json"
    stored = read_json(path)
    if stored is not None and stored.get("key") == key and all(k in stored.get("scores", {}) for k in required):
        return stored["scores"], True
    scores = compute()
    write_json_atomic(path, {"key": key, "scores": scores})
    return scores, False
