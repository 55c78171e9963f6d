"""What every task shares: deterministic cached splits, tokenisation for causal LMs and encoders, and scoring.

A task subclass says where its rows come from (`builtin_pools`, or a user's files / hub dataset through
`task.source`), how a causal LM is asked (`templates`, the first one being the task's own prompt) and what it
should answer (`target`), and how answers are scored (`score`, through an `evaluate` module). Splits are written
once to `<cache>/data/<task>/<prep hash>/{train,validation,test}.jsonl`; the same inputs always give
byte-identical files, and their SHA-256 is the run's data fingerprint.

Per-item records (harness/items.py): `item_records` gives each scored item's id, score, sufficient statistics
and answer, through the task's own scorer (`score(..., items_for=primary_metric)`); `floors` gives the task's
trivial baselines, answers made without a model that the same scorer scores on the same items.

How `answers` and `choice_logprobs` run a causal LM over token ids (batching, the shared prompt prefix's cache,
greedy generation) is in harness/tasks/generation.py.
"""

from __future__ import annotations

import hashlib
import inspect
import json
import os
from collections import Counter
from collections.abc import Callable, Hashable, Iterable
from pathlib import Path
from typing import Any, ClassVar

import datasets
import evaluate
import torch
from omegaconf import DictConfig

from harness.items import item_id, mean_stats
from harness.tasks.generation import (choice_inputs, generate_greedy, last_position_logprobs, prefix_cache,
                                      shared_prefix)

SPLITS = ("train", "validation", "test")
METRICS_DIR = Path(__file__).resolve().parent.parent / "metrics"


def load_metric(name: str) -> evaluate.EvaluationModule:
    """An `evaluate` module shipped inside the package (the hub copy cannot be fetched offline)."""
    return evaluate.load(str(METRICS_DIR / name))


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    with open(path, encoding="utf-8") as fh:
        return [json.loads(line) for line in fh]


# a trivial baseline: the answers it gives to evaluation rows, made without a model
Floor = Callable[[list[dict[str, Any]]], list[str]]


def majority(values: Iterable[Hashable], default: Any = "") -> Any:
    """The most frequent value; a tie goes to the smallest of the tied values (sorted as strings), so the
    choice is deterministic; `default` when there are none."""
    counts = Counter(values)
    if not counts:
        return default
    return min(counts, key=lambda v: (-counts[v], str(v)))


def constant(answer: str) -> Floor:
    """A floor that gives every row the same answer."""
    return lambda rows: [answer] * len(rows)


class Task:
    name: ClassVar[str]
    primary_metric: ClassVar[str]
    labels: list[str] | None = None  # encoders classify over these; per task instance (classify reads the user's)
    # predictions all of one class mark a run `collapsed` (harness/training_budget.py); memorize: chance level is a result
    one_class_is_collapse: ClassVar[bool] = True
    prep_keys: ClassVar[tuple[str, ...]] = ("data_seed",)  # config keys that change the prepared pools
    version: ClassVar[int] = 1
    # Instruction phrasings, formatted with a row's fields; [0] is the task's own prompt, the rest serve `instruct`.
    templates: ClassVar[tuple[str, ...]] = ()
    # Row fields a user's data must supply (task.source=files|hub maps dataset columns onto them); () = builtin only.
    fields: ClassVar[tuple[str, ...]] = ()

    def __init__(self, cfg: DictConfig, cache: Path):
        self.cfg = cfg
        self.cache = cache
        self.source = cfg.get("source") or "builtin"
        if self.source != "builtin":
            from harness.tasks.sources import check_source

            check_source(self)

    # ---- data ----
    def builtin_pools(self) -> dict[str, list[dict[str, Any]]]:
        """Every row of each split from the bundled data, deterministically ordered."""
        raise NotImplementedError

    def row_from_record(self, record: dict[str, Any]) -> dict[str, Any]:
        """A row of this task from a user's record that holds `fields` (task.source=files|hub); may raise ConfigError."""
        return {f: record[f] for f in self.fields}

    def build_pools(self) -> dict[str, list[dict[str, Any]]]:
        """Every row of each split, deterministically ordered; `n_train` / `n_eval` take prefixes."""
        if self.source == "builtin":
            return self.builtin_pools()
        from harness.tasks.sources import external_pools

        return external_pools(self)

    def prep_params(self) -> dict[str, Any]:
        """Everything the prepared pools depend on (hashed into the cache folder name)."""
        params = {k: self.cfg.get(k) for k in self.prep_keys} | {"version": self.version}
        if self.source != "builtin":
            from harness.tasks.sources import source_params

            params |= source_params(self)
        return params

    def prep_dir(self) -> Path:
        digest = hashlib.sha1(json.dumps(self.prep_params(), sort_keys=True, default=str).encode()).hexdigest()[:10]
        return self.cache / "data" / self.name / digest

    def read_split(self, split: str) -> list[dict[str, Any]]:
        """The whole prepared pool of a split (no `n_train` / `n_eval` cut)."""
        return read_jsonl(self.prepare() / f"{split}.jsonl")

    def prepare(self) -> Path:
        folder = self.prep_dir()
        if all((folder / f"{s}.jsonl").exists() for s in SPLITS):
            return folder
        pools = self.build_pools()
        folder.mkdir(parents=True, exist_ok=True)
        for split in SPLITS:
            tmp = folder / f"{split}.jsonl.tmp"
            with open(tmp, "w", encoding="utf-8") as fh:
                for row in pools[split]:
                    fh.write(json.dumps(row, ensure_ascii=False, sort_keys=True) + "\n")
            os.replace(tmp, folder / f"{split}.jsonl")
        return folder

    def fingerprint(self) -> str:
        digest = hashlib.sha256()
        for split in SPLITS:
            digest.update((self.prepare() / f"{split}.jsonl").read_bytes())
        return digest.hexdigest()[:16]

    def splits(self) -> datasets.DatasetDict:
        folder = self.prepare()
        files = {s: str(folder / f"{s}.jsonl") for s in SPLITS}
        data = datasets.load_dataset("json", data_files=files, cache_dir=str(self.cache / "hf-datasets"))
        sizes = {"train": self.cfg.n_train, "validation": self.cfg.n_eval, "test": self.cfg.n_eval}
        return datasets.DatasetDict({s: data[s].select(range(min(sizes[s], len(data[s])))) for s in SPLITS})

    # ---- prompting ----
    def render(self, row: dict[str, Any], template: int = 0) -> str:
        """The instruction for a row in one of the task's phrasings."""
        return self.templates[template].format(**row)

    def messages(self, row: dict[str, Any]) -> list[dict[str, str]]:
        return [{"role": "user", "content": self.render(row, 0)}]

    def target(self, row: dict[str, Any]) -> str:
        raise NotImplementedError

    def describe(self, row: dict[str, Any]) -> str:
        """The input as a person reads it (for sample predictions)."""
        return self.messages(row)[-1]["content"]

    def encoder_text(self, row: dict[str, Any]) -> str:
        raise NotImplementedError(f"task '{self.name}' has no encoder form")

    def label_id(self, row: dict[str, Any]) -> int:
        assert self.labels is not None
        return self.labels.index(self.target(row))

    def label_record(self, data: datasets.DatasetDict) -> dict[str, Any]:
        """For result.json: the label set and each split's class counts (train, validation and test as the run uses
        them); {} for tasks without labels."""
        if not self.labels:
            return {}
        counts = {s: {label: 0 for label in self.labels} for s in SPLITS}
        for split in SPLITS:
            for row in data[split]:
                counts[split][self.target(row)] += 1
        return {"label_set": list(self.labels), "class_balance": counts}

    # ---- scoring ----
    def predicted_label(self, output: str) -> str:
        """The class an answer names (classification tasks; used to detect one-class collapse)."""
        return output

    def score(self, outputs: list[str], rows: list[dict[str, Any]], items_for: str | None = None) -> dict[str, Any]:
        """Metrics dict that includes `self.primary_metric`; with `items_for` (a metric name) also `item_scores`
        and `item_stats`, per item, for that metric (what the metric modules give with the same argument)."""
        raise NotImplementedError

    # ---- per-item records and floors ----
    def item_scores(self, outputs: list[str], rows: list[dict[str, Any]]) -> tuple[list[float], list[list[float]]]:
        """Each item's score on the primary metric, and the stats whose column sums give the corpus value
        through `harness.items.aggregate(primary_metric, sums)`."""
        result = self.score(outputs, rows, items_for=self.primary_metric)
        return result["item_scores"], result["item_stats"]

    def item_pred(self, output: str) -> str | None:
        """What an item record keeps of an answer: the answer itself (label tasks: the label it names)."""
        return output

    def scored_items(self, outputs: list[str], rows: list[dict[str, Any]], keep_pred: bool = True
                     ) -> tuple[dict[str, float], list[dict[str, Any]]]:
        """`score`'s metrics and the item records (`item_records`) from one scoring pass."""
        takes_items = "items_for" in inspect.signature(self.score).parameters or any(
            p.kind is p.VAR_KEYWORD for p in inspect.signature(self.score).parameters.values())
        result = self.score(outputs, rows, items_for=self.primary_metric) if takes_items else self.score(outputs, rows)
        if "item_scores" in result:
            scores, stats = result.pop("item_scores"), result.pop("item_stats")
        else:  # a scorer without per-item output (e.g. a user's task): each item scored alone, right for a metric
            # that is a mean over items; a corpus metric must return its own `item_stats` (harness/items.py)
            scores = [float(self.score([o], [r])[self.primary_metric]) for o, r in zip(outputs, rows)]
            stats = [mean_stats(x) for x in scores]
        return result, [{"id": item_id(row), "score": float(score), "stats": list(stat),
                         "pred": self.item_pred(output) if keep_pred else None}
                        for row, output, score, stat in zip(rows, outputs, scores, stats)]

    def item_records(self, outputs: list[str], rows: list[dict[str, Any]], keep_pred: bool = True) -> list[dict[str, Any]]:
        """{id, score, stats, pred} per item, in the rows' order (`pred` null without `keep_pred`)."""
        return self.scored_items(outputs, rows, keep_pred)[1]

    def floors(self, train_rows: list[dict[str, Any]]) -> dict[str, Floor]:
        """The task's trivial baselines, named, built from the run's training rows: each maps evaluation rows to
        the answers it gives, scored by `score` like a model's. None here: the untuned model is the only floor."""
        return {}

    # ---- tokenisation ----
    def prompt_ids(self, tokenizer, row: dict[str, Any]) -> list[int]:
        msgs = self.messages(row)
        if tokenizer.chat_template:
            ids = tokenizer.apply_chat_template(msgs, add_generation_prompt=True, tokenize=True)
            return list(ids["input_ids"] if isinstance(ids, dict) or hasattr(ids, "keys") else ids)
        text = "\n\n".join(m["content"] for m in msgs) + "\n\nAnswer: "
        return tokenizer(text, add_special_tokens=True)["input_ids"]

    def causal_features(self, tokenizer, max_len: int):
        """Map function: prompt + target + end-of-turn; loss only on the target (prompt labels are -100)."""
        end = tokenizer.eos_token or ""

        def featurise(row: dict[str, Any]) -> dict[str, list[int]]:
            prompt = self.prompt_ids(tokenizer, row)
            answer = tokenizer(self.target(row) + end, add_special_tokens=False)["input_ids"][:max_len]
            prompt = prompt[-(max_len - len(answer)):] if len(answer) < max_len else []
            ids = prompt + answer
            return {"input_ids": ids, "attention_mask": [1] * len(ids), "labels": [-100] * len(prompt) + answer}

        return featurise

    def encoder_features(self, tokenizer, max_len: int):
        def featurise(row: dict[str, Any]) -> dict[str, Any]:
            enc = tokenizer(self.encoder_text(row), truncation=True, max_length=max_len)
            return {**enc, "labels": self.label_id(row)}

        return featurise

    def train_dataset(self, split: datasets.Dataset, tokenizer, kind: str, max_len: int) -> datasets.Dataset:
        featurise = self.causal_features(tokenizer, max_len) if kind == "causal_lm" else self.encoder_features(tokenizer, max_len)
        return split.map(featurise, remove_columns=split.column_names, desc=f"tokenising {self.name}")

    # ---- answering ----
    @torch.no_grad()
    def predict(self, model, tokenizer, split: datasets.Dataset, kind: str, batch_size: int, max_len: int,
                by_length: bool = True, share_prefix: bool = True) -> list[str]:
        """Greedy, batched answers for a causal LM (`answers`); arg-max labels for an encoder, in the rows' order.
        With `by_length` an encoder's batches hold texts of similar length, longest first (the first batch is the
        largest, so a memory limit shows at once): on classify's test tweets that pads 38% fewer tokens than
        batches in file order."""
        model.eval()
        rows = list(split)
        device = next(model.parameters()).device
        if kind == "causal_lm":
            return self.answers(model, tokenizer, rows, device, batch_size, max_len, by_length=by_length,
                                share_prefix=share_prefix)
        encoded = tokenizer([self.encoder_text(r) for r in rows], truncation=True, max_length=max_len)
        lengths = [len(ids) for ids in encoded["input_ids"]]
        order = sorted(range(len(rows)), key=lambda i: -lengths[i]) if by_length else list(range(len(rows)))
        outputs: list[str] = [""] * len(rows)
        for start in range(0, len(order), batch_size):
            chunk = order[start:start + batch_size]
            batch = tokenizer.pad({key: [values[i] for i in chunk] for key, values in encoded.items()},
                                  return_tensors="pt").to(device)
            for i, label in zip(chunk, model(**batch).logits.argmax(-1).tolist()):
                outputs[i] = self.labels[label]
        return outputs

    def answers(self, model, tokenizer, rows: list[dict[str, Any]], device, batch_size: int, max_len: int,
                max_new_tokens: int | None = None, by_length: bool = True, share_prefix: bool = True) -> list[str]:
        """Greedy answers in the rows' order. With `by_length` the prompts are batched longest first, so a batch
        holds prompts of similar length and little left padding (the first batch is the largest, so a memory
        problem shows at once); within a batch each sequence stops at its EOS, generation ends once every one
        has, and the KV cache is used. With `share_prefix` the tokens every prompt starts with (chat template,
        instruction; 48 of classify's 85 on smollm2-135m) are run through the model once and their cache reused
        by every batch. Outputs equal the prompt-order, one-by-one
        answers (tests/test_scoring.py)."""
        prompts = [self.prompt_ids(tokenizer, r)[-max_len:] for r in rows]
        order = sorted(range(len(rows)), key=lambda i: -len(prompts[i])) if by_length else list(range(len(rows)))
        prefix = shared_prefix(model, prompts) if share_prefix else []
        cache = prefix_cache(model, prefix, device) if prefix else None
        outputs = [""] * len(rows)
        for start in range(0, len(order), batch_size):
            chunk = order[start:start + batch_size]
            texts = generate_greedy(model, tokenizer, [prompts[i] for i in chunk], device,
                                    max_new_tokens or self.cfg.max_new_tokens, prefix=prefix, cache=cache)
            for i, text in zip(chunk, texts):
                outputs[i] = text
        return outputs

    def choice_answers(self, model, tokenizer, rows: list[dict[str, Any]], choices: list[str], batch_size: int,
                       max_len: int, share_prefix: bool = True) -> list[str]:
        """For each row the choice the model scores highest after the row's prompt (`choice_logprobs`): lm-eval's
        multiple-choice form, its `acc` (summed log-probabilities, no length normalisation); a tie goes to the
        choice listed first."""
        totals = self.choice_logprobs(model, tokenizer, rows, choices, batch_size, max_len, share_prefix)
        return [choices[int(best)] for best in totals.argmax(dim=1)]  # argmax: the first of equal maxima

    @torch.no_grad()
    def choice_logprobs(self, model, tokenizer, rows: list[dict[str, Any]], choices: list[str], batch_size: int,
                        max_len: int, share_prefix: bool = True) -> torch.Tensor:
        """rows x choices: the summed log-probability of each choice's tokens after each row's prompt. Each choice
        is tokenised on its own, as `causal_features` appends a target. A forward pass runs the prompt and a
        choice's tokens but its last, once per distinct such input (`choice_inputs`): when every choice is one
        token, as the sentiment labels are on smollm2-135m, a row takes a single pass over its prompt, less than
        generating an answer. Inputs are batched longest first and laid out as `answers` lays out prompts (left
        padding; with `share_prefix` the prompts' common beginning is run once and its cache reused), with
        position ids counted as generate counts them, so a padded input scores as it does alone. peft's prompt
        learning (prefix / prompt tuning) sets positions itself: there padding moves a score slightly (on
        tiny-llama with a random prefix, up to 0.011 nats between batch sizes 1 and 8; prompt tuning 0.0002)."""
        if not choices:
            raise ValueError(f"task '{self.name}': choice_logprobs needs at least one choice")
        model.eval()
        device = next(model.parameters()).device
        tokens = [tokenizer(c, add_special_tokens=False)["input_ids"] for c in choices]
        if not all(tokens):
            raise ValueError(f"task '{self.name}': a choice tokenises to nothing ({choices!r})")
        keep = max(1, max_len - max(map(len, tokens)) + 1)  # room for the longest choice within max_len
        inputs, scored = choice_inputs([self.prompt_ids(tokenizer, r)[-keep:] for r in rows], tokens)
        order = sorted(range(len(inputs)), key=lambda i: -len(inputs[i]))
        prefix = shared_prefix(model, inputs) if share_prefix else []
        cache = prefix_cache(model, prefix, device) if prefix else None
        totals = torch.zeros(len(rows), len(choices), dtype=torch.float64)
        for start in range(0, len(order), batch_size):
            chunk = order[start:start + batch_size]
            last = max(len(tokens[k]) for i in chunk for _, k in scored[i])
            logprobs = last_position_logprobs(model, [inputs[i] for i in chunk], tokenizer.pad_token_id, device,
                                              last, prefix, cache)
            for row_logprobs, i in zip(logprobs, chunk):
                for row, k in scored[i]:
                    tail = row_logprobs[last - len(tokens[k]):]  # the positions that predict choice k's tokens
                    totals[row, k] = tail.gather(1, torch.tensor(tokens[k]).unsqueeze(1)).sum().item()
        return totals
