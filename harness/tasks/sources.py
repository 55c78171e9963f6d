"""A task's rows from the user's own data: local JSONL / CSV files or a Hugging Face hub dataset, both read with
`datasets.load_dataset` and mapped onto the task's row fields.

    python -m harness.run task=classify task.source=files task.path=tweets.csv 'task.fields={text: tweet, label: mood}'
    python -m harness.run task=style task.source=hub task.dataset=org/name 'task.fields={source: modern, target: old}'

`task.fields` maps a task field to a dataset column (a field left out is looked up under its own name); a class
column of a hub dataset (`ClassLabel`) gives its class names. Files may start with a UTF-8 byte-order mark. Splits
named `train` / `validation` / `test` are used as they are; missing evaluation splits are carved from the
shuffled training rows (HOLDOUT of them each, by `task.data_seed`) after exact duplicates are dropped, so the
splits never share a row. Problems are one-line errors: a missing column, an empty value, an unreachable hub.
"""

from __future__ import annotations

import hashlib
import json
import random
from pathlib import Path
from typing import TYPE_CHECKING, Any

import datasets
from omegaconf import OmegaConf

from harness import hub
from harness.errors import AssetError, ConfigError

if TYPE_CHECKING:
    from harness.tasks.base import Task

SOURCES = ("builtin", "files", "hub")
HOLDOUT = 0.1  # share of the rows carved out for each missing evaluation split
FILE_BUILDERS = {".jsonl": "json", ".json": "json", ".csv": "csv"}
# Files are read as UTF-8 with an optional byte-order mark (what Excel and Notepad save): the `utf-8-sig` codec drops
# a leading BOM and reads every other file as plain UTF-8. Older `datasets` kept the BOM in front of the first JSON
# object ("Expected object or value") or the first CSV column's name.
FILE_ENCODING = "utf-8-sig"


def _field_map(task: Task) -> dict[str, str]:
    given = task.cfg.get("fields") or {}
    given = OmegaConf.to_container(given) if OmegaConf.is_config(given) else dict(given)
    unknown = sorted(set(given) - set(task.fields))
    if unknown:
        raise ConfigError(f"task.fields names {', '.join(unknown)}, which task '{task.name}' does not use; "
                          f"its fields are: {', '.join(task.fields)}")
    return {f: str(given.get(f, f)) for f in task.fields}


def _data_files(task: Task) -> dict[str, list[Path]]:
    """task.path as {split: [files]}: one file or a list is all `train`; a mapping names the splits."""
    raw = task.cfg.get("path")
    if not raw:
        raise ConfigError("task.source=files needs task.path (a .jsonl / .csv file, a list, or {train: ..., test: ...}), "
                          "e.g. task.path=data/train.jsonl")
    raw = OmegaConf.to_container(raw) if OmegaConf.is_config(raw) else raw
    by_split = raw if isinstance(raw, dict) else {"train": raw}
    files = {str(split): [Path(p).expanduser().resolve() for p in ([v] if isinstance(v, str) else list(v))]
             for split, v in by_split.items()}
    paths = [p for ps in files.values() for p in ps]
    for path in paths:
        if path.is_dir():
            raise ConfigError(f"task.path={path} is a folder; give a .jsonl or .csv file (or a list of them)")
        if not path.is_file():
            raise ConfigError(f"task.path={path} does not exist; give an existing .jsonl or .csv file")
        if path.stat().st_size == 0:
            raise ConfigError(f"task.path={path} is empty; give a file with one row per example")
        if path.suffix.lower() not in FILE_BUILDERS:
            raise ConfigError(f"task.path={path} has an unsupported type; use .jsonl, .json or .csv")
    if len({FILE_BUILDERS[p.suffix.lower()] for p in paths}) > 1:
        raise ConfigError("task.path mixes CSV and JSON files; convert them to one format")
    return files


def check_source(task: Task) -> None:
    """Fail at task creation (before any model loads) when the source settings cannot work."""
    if task.source not in SOURCES:
        raise ConfigError(f"task.source must be one of {', '.join(SOURCES)}, got {task.source!r}")
    if not task.fields:
        raise ConfigError(f"task '{task.name}' makes its own data; it has no task.source={task.source} form")
    _field_map(task)
    if task.source == "files":
        _data_files(task)
    elif not task.cfg.get("dataset"):
        raise ConfigError("task.source=hub needs task.dataset (a hub dataset id), e.g. task.dataset=org/name")


def source_params(task: Task) -> dict[str, Any]:
    """What the prepared pools depend on besides the task's own keys (file contents are hashed)."""
    params: dict[str, Any] = {"source": task.source, "fields": _field_map(task)}
    if task.source == "files":
        digest = hashlib.sha256()
        for split, paths in sorted(_data_files(task).items()):
            digest.update(split.encode())
            for path in paths:
                digest.update(path.read_bytes())
        params["files_sha256"] = digest.hexdigest()
    else:
        params |= {"dataset": task.cfg.dataset, "dataset_config": task.cfg.get("dataset_config"),
                   "revision": task.cfg.get("revision")}
    return params


def check_hub_reachable(dataset: str, timeout_s: float = 3.0) -> None:
    """A few seconds, not datasets' minute of retries: an unreachable hub without offline mode is one line."""
    if hub.offline("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE"):
        return  # datasets then reads its local cache only, and fails at once when the dataset is not there
    if not hub.reachable(timeout_s):
        raise AssetError(f"hub dataset '{dataset}' cannot be fetched: {hub.host()} is unreachable; set "
                         f"HF_HUB_OFFLINE=1 to use a locally cached copy, or use task.source=files")


def _load(task: Task) -> datasets.DatasetDict:
    kwargs: dict[str, Any] = {"cache_dir": str(task.cache / "hf-datasets")}
    if task.source == "files":
        files = _data_files(task)
        builder = FILE_BUILDERS[next(iter(files.values()))[0].suffix.lower()]
        quiet = datasets.logging.get_verbosity()
        datasets.disable_progress_bars()  # the one line of a bad file must be the only line
        datasets.logging.set_verbosity(datasets.logging.CRITICAL)  # its own "Failed to load JSON" line too
        try:
            return datasets.load_dataset(builder, data_files={s: [str(p) for p in ps] for s, ps in files.items()},
                                         encoding=FILE_ENCODING, **kwargs)
        except Exception as err:  # noqa: BLE001 - a malformed file is the user's to fix, in one line
            cause = err
            while cause.__cause__ is not None or cause.__context__ is not None:  # datasets wraps the parser's error
                cause = cause.__cause__ or cause.__context__
            detail = (str(cause).splitlines() or [""])[0][:200]
            raise ConfigError(f"cannot read task.path as {builder} ({type(cause).__name__}: {detail}); check that "
                              f"every line is one complete {'JSON object' if builder == 'json' else 'CSV row'}") from None
        finally:
            datasets.enable_progress_bars()
            datasets.logging.set_verbosity(quiet)
    dataset = task.cfg.dataset
    check_hub_reachable(dataset)
    try:
        loaded = datasets.load_dataset(dataset, task.cfg.get("dataset_config"), revision=task.cfg.get("revision"), **kwargs)
    except Exception as err:  # noqa: BLE001 - offline, not cached, no such dataset: all the same to the user
        first = (str(err).splitlines() or [""])[0][:200]
        raise AssetError(f"hub dataset '{dataset}' is not available ({type(err).__name__}: {first}); check the id, "
                         f"or use a cached copy (HF_HUB_OFFLINE=1) or task.source=files") from None
    if not isinstance(loaded, datasets.DatasetDict):
        loaded = datasets.DatasetDict({"train": loaded})
    return loaded


def split_rows(task: Task, split: datasets.Dataset, where: str) -> list[dict[str, Any]]:
    mapping = _field_map(task)
    missing = [f"{field} (column '{col}')" for field, col in mapping.items() if col not in split.column_names]
    if missing:
        raise ConfigError(f"{where} lacks {', '.join(missing)}; its columns are {', '.join(split.column_names)}; "
                          f"map them with task.fields={{{', '.join(f'{f}: <column>' for f in mapping)}}}")
    # a hub dataset's class column (ClassLabel) holds integers; its rows mean the class names (imdb: neg, pos)
    names = {col: split.features[col].int2str for col in mapping.values()
             if isinstance(split.features.get(col), datasets.ClassLabel)}
    rows = []
    for i, record in enumerate(split.select_columns(list(dict.fromkeys(mapping.values())))):
        values = {field: names[col](record[col]) if col in names and record[col] is not None and record[col] >= 0
                  else record[col] for field, col in mapping.items()}
        nested = [f"{f} (column '{mapping[f]}': {type(v).__name__})" for f, v in values.items() if isinstance(v, (list, dict))]
        if nested:
            raise ConfigError(f"{where} row {i} holds a list or mapping in {', '.join(nested)}; each field must be "
                              "text or a number: flatten that column or map another with task.fields")
        empty = [f for f, v in values.items() if v is None or (isinstance(v, str) and not v.strip())]
        if empty:
            raise ConfigError(f"{where} row {i} has an empty {', '.join(empty)}; drop or fill empty rows")
        rows.append(task.row_from_record(values))
    if not rows:
        raise ConfigError(f"{where} has no rows")
    return rows


def _dedup(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    seen: dict[str, dict[str, Any]] = {}
    for row in rows:
        seen.setdefault(json_key(row), row)
    return list(seen.values())


def external_pools(task: Task) -> dict[str, list[dict[str, Any]]]:
    """train / validation / test rows from the user's data, deterministic for a given `data_seed`."""
    loaded = _load(task)
    names = {"train": "train", "validation": next((n for n in ("validation", "valid", "dev") if n in loaded), None),
             "test": "test" if "test" in loaded else None}
    if "train" not in loaded:
        raise ConfigError(f"the data has no 'train' split (it has {', '.join(loaded)}); name the training data 'train'")
    where = str(task.cfg.get("path") or task.cfg.get("dataset"))
    pools = {s: _dedup(split_rows(task, loaded[n], f"{where} [{n}]")) for s, n in names.items() if n is not None}
    rng = random.Random(task.cfg.data_seed)
    train = pools["train"]
    rng.shuffle(train)
    held = {json_key(r) for s in ("validation", "test") for r in pools.get(s, [])}
    train = [r for r in train if json_key(r) not in held]  # a row in an evaluation split never trains
    n = max(1, round(HOLDOUT * len(train)))
    for split in ("test", "validation"):
        if split not in pools:
            pools[split], train = train[:n], train[n:]
    if not train:
        raise ConfigError(f"{where} has too few rows to split into train / validation / test")
    pools["train"] = train
    return pools


def json_key(row: dict[str, Any]) -> str:
    return json.dumps(row, sort_keys=True)
