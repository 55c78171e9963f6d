"""Finished runs as one pandas DataFrame, from run folders (`<runs>/<run_id>/result.json`) or from the W&B API.

Both sources give the same columns (`COLUMNS`), so every table and figure can be rebuilt from the local records
alone, or from runs a team logged online. One row per run id: a run logged twice (a re-run) keeps its `ok` record,
else its latest.

    from analysis.runs import load_folders, load_wandb
    df = load_folders(["runs"])                          # every result.json under runs/
    df = load_wandb("peft-harness", group="classify")    # the same frame from wandb.Api()
"""

from __future__ import annotations

import hashlib
import inspect
import json
import math
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import pandas as pd

from harness.errors import ConfigError
from harness.results import RECORD_COLUMNS
from harness.runfolder import RESULT_FILE, find_runs

# The record's columns come from its schema (harness/results.py FIELDS); the rest are derived here.
DERIVED_COLUMNS = ["label", "variant", "cell", "budget", "source", "lr_variant", "max_seq_len", "batch_size"]
COLUMNS = [*RECORD_COLUMNS, *DERIVED_COLUMNS]
NUMERIC = ["r", "alpha", "seed", "score", "base_score", "forgetting", "params_total", "params_trainable",
           "trainable_pct", "peak_mem_bytes", "peak_reserved_bytes", "train_tokens_per_s", "train_runtime_s",
           "adapter_bytes", "lr", "max_steps", "val_score", "base_val_score", "train_steps", "train_epochs",
           "train_examples", "train_rows", "train_tokens", "max_seq_len", "eval_s", "batch_size"]
# W&B run states -> harness statuses, for runs whose summary never got a `status` (killed before finishing).
WANDB_STATES = {"finished": "ok", "crashed": "failed", "failed": "failed", "killed": "interrupted",
                "running": "running", "preempted": "interrupted"}


def scalar(value: Any) -> float:
    """A number from a field that may be missing, a number, or a dict holding one (e.g. forgetting's detail)."""
    if isinstance(value, dict):
        value = next((value[k] for k in ("forgetting", "delta", "value", "mean") if k in value), None)
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return math.nan
    return float(value)


# train.* keys that only say when and on how many rows validation is scored along training: a search run (a dense
# curve for halving's rungs) and a reporting run (sweep.report_eval_every) at the same rate are one variant
EVAL_SCHEDULE = ("eval_every", "eval_subset")


def _short_hash(obj: Any) -> str:
    return hashlib.sha1(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()[:8]


def label(method: str, r: Any, targets: Any) -> str:
    """How a method variant is named in every table and figure: `full`, `lora r=16 qv`, `ia3 all-linear`."""
    parts = [str(method)]
    if r is not None and not (isinstance(r, float) and math.isnan(r)):
        parts.append(f"r={int(r)}")
    if targets not in (None, "") and not (isinstance(targets, float) and math.isnan(targets)):
        parts.append(str(targets))
    return " ".join(parts)


def record_to_row(rec: dict[str, Any], source: str) -> dict[str, Any]:
    """One result.json (or W&B summary) as a flat row, with the keys the analysis groups by.

    - `cell`: what makes scores comparable: task, model, data fingerprint and the task config (split sizes, seed);
      retention divides only within one cell.
    - `variant`: the run's effective config minus its seed, learning rate and validation schedule
      (`EVAL_SCHEDULE`): one method configuration, whose learning rate is selected on validation
      (analysis.tables.selection).
    - `lr_variant`: the same with the learning rate: the seeds of one variant at one rate.
    - `budget`: what was trained: examples (steps x batch x accumulation) and sequence length, so a variant is
      compared with the full-FT run trained alike.
    """
    cfg = rec.get("config") if isinstance(rec.get("config"), dict) else {}
    train = cfg.get("train") if isinstance(cfg.get("train"), dict) else {}
    row = {k: rec.get(k) for k in COLUMNS}
    row["forgetting"] = scalar(rec.get("forgetting"))
    row["label"] = label(rec.get("method"), rec.get("r"), rec.get("targets"))
    task_cfg = cfg.get("task") if isinstance(cfg.get("task"), dict) else {}
    task_cfg = {k: v for k, v in task_cfg.items() if v not in (None, {}, [], "")}  # unset options: same data
    row["cell"] = "|".join(str(x) for x in (rec.get("task"), rec.get("model"), rec.get("data_fingerprint"),
                                             _short_hash(task_cfg) if task_cfg else ""))
    identity = {k: v for k, v in cfg.items() if k != "seed"} if cfg else \
        {k: rec.get(k) for k in ("task", "model", "method", "r", "alpha", "targets", "lr", "precision", "max_steps")}
    if isinstance(identity.get("train"), dict):  # when validation is scored changes nothing trained
        identity = identity | {"train": {k: v for k, v in identity["train"].items() if k not in EVAL_SCHEDULE}}
    row["lr_variant"] = _short_hash(identity)
    if isinstance(identity.get("train"), dict):
        identity = identity | {"train": {k: v for k, v in identity["train"].items() if k != "lr"}}
    identity.pop("lr", None)
    row["variant"] = _short_hash(identity)
    steps = rec.get("train_steps") or rec.get("max_steps") or train.get("max_steps")
    # examples per optimizer step as configured: train_examples / train_steps misreads it where the last batch of
    # an epoch is short (2400 rows at 64: 63.2) or a resumed run recorded only its last segment
    per_step = train.get("batch_size", 1) * train.get("grad_accum", 1)
    examples = steps * per_step if steps and train else steps
    row["budget"] = f"{examples} examples x {train.get('max_seq_len')} tokens" if train else f"{steps} steps"
    row["max_seq_len"] = train.get("max_seq_len")
    row["batch_size"] = per_step if train.get("batch_size") else None
    if row.get("train_examples") is None:
        row["train_examples"] = examples
    row["source"] = source
    return row


def frame(rows: Iterable[dict[str, Any]]) -> pd.DataFrame:
    """Rows -> the analysis DataFrame: typed numeric columns, one row per run id."""
    df = pd.DataFrame(list(rows), columns=COLUMNS)
    for col in NUMERIC:
        df[col] = pd.to_numeric(df[col], errors="coerce").astype(float)
    df["status"] = df["status"].fillna("missing").astype(str)
    if df.empty:
        return df
    # a run id logged twice: keep the ok record, then the latest
    df["_ok"] = df["status"].eq("ok")
    df = df.sort_values(["_ok", "finished_at"], na_position="first").drop_duplicates("run_id", keep="last")
    df = df.drop(columns="_ok").sort_values(["task", "model", "method", "r", "targets", "seed"], na_position="first")
    _disambiguate_labels(df)
    return df.reset_index(drop=True)


def _disambiguate_labels(df: pd.DataFrame) -> None:
    """Two ok variants with the same label in one cell and budget (e.g. the same method reached by two sweeps
    whose configs differ only in an unused default) are told apart by what differs, in words: the sweep (`group`)
    each came from, else `#<variant>`. Variants of one label in different budgets keep it: the budget is its own
    column wherever both appear."""
    ok = df[df["status"].eq("ok")]
    keys = ["cell", "budget", "label"]
    clashing = ok.groupby(keys)["variant"].transform("nunique") > 1
    hit = df.set_index(["cell", "budget", "variant"]).index.isin(
        ok.loc[clashing].set_index(["cell", "budget", "variant"]).index)
    if not hit.any():
        return
    groups = ok.loc[clashing].groupby(["cell", "budget", "variant"])["group"].agg(
        lambda g: ",".join(sorted({str(x) for x in g.dropna()})))
    names = {}
    for (cell, budget, label), part in ok.loc[clashing].groupby(keys):
        sweeps = {v: groups.get((cell, budget, v), "") for v in part["variant"].unique()}
        distinct = all(sweeps.values()) and len(set(sweeps.values())) == len(sweeps)
        names |= {(cell, budget, v): f" (sweep {s})" if distinct else f" #{v[:4]}" for v, s in sweeps.items()}
    df.loc[hit, "label"] = [lab + names.get((c, b, v), f" #{v[:4]}") for lab, c, b, v in
                            zip(df.loc[hit, "label"], df.loc[hit, "cell"], df.loc[hit, "budget"], df.loc[hit, "variant"])]


def result_files(roots: Sequence[str | Path]) -> list[Path]:
    """Every result.json under the given folders (a root may itself be one run folder)."""
    return [folder / RESULT_FILE for folder in find_runs(roots)]


def load_folders(roots: Sequence[str | Path], group: str | None = None) -> pd.DataFrame:
    """Runs from their folders; `group` keeps one sweep's runs. An unreadable record counts as a failed run."""
    rows = []
    for path in result_files(roots):
        try:
            rec = json.loads(path.read_text())
        except (OSError, json.JSONDecodeError) as err:
            rec = {"run_id": path.parent.name, "status": "unreadable", "reason": f"{type(err).__name__}: {err}"}
        if group is None or rec.get("group") == group:
            rows.append(record_to_row(rec, str(path.parent)))
    if not rows:
        where = ", ".join(map(str, roots))
        raise ConfigError(f"no result.json under {where}" + (f" with group={group}" if group else "")
                          + "; run `make sweep` (or python -m harness.run) first, or point --runs at the runs folder")
    return frame(rows)


def _plain(obj: Any) -> Any:
    """W&B summary/config values (SummarySubDict, lists) -> plain Python values."""
    if hasattr(obj, "_json_dict"):
        obj = obj._json_dict
    if isinstance(obj, dict):
        return {str(k): _plain(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_plain(v) for v in obj]
    return obj


def _config_name(value: Any) -> Any:
    """A config group as W&B stores it: `{"name": "lora", ...}` -> "lora" (W&B may wrap it in {"value": ...})."""
    if isinstance(value, dict) and set(value) == {"value"}:
        value = value["value"]
    return value.get("name") if isinstance(value, dict) else value


def wandb_record(run: Any) -> dict[str, Any]:
    """A wandb.Api run -> the record a run folder would hold: the summary (our result keys), gaps filled from
    the config and the run's state."""
    summary = _plain(run.summary)
    config = _plain(run.config)
    rec = dict(summary)
    rec.setdefault("config", config)
    for key in ("task", "model", "method", "targets"):
        if rec.get(key) is None:
            rec[key] = _config_name(config.get(key))
    for key in ("r", "alpha", "seed"):
        if rec.get(key) is None:
            rec[key] = _config_name(config.get(key))
    rec.setdefault("run_id", getattr(run, "name", None) or getattr(run, "id", None))
    rec.setdefault("group", getattr(run, "group", None))
    if not rec.get("status"):
        rec["status"] = WANDB_STATES.get(getattr(run, "state", None), "missing")
    return rec


def load_wandb(project: str, group: str | None = None, entity: str | None = None, api: Any = None) -> pd.DataFrame:
    """The same frame from W&B: every run of `project` (and `group`), read through `wandb.Api`."""
    if api is None:
        import wandb

        try:
            api = wandb.Api(timeout=60)
        except Exception as err:  # noqa: BLE001 - the library raises several kinds for a missing login
            raise ConfigError(f"cannot reach the W&B API ({str(err).splitlines()[0]}); run `wandb login` or set "
                              "WANDB_API_KEY, or read the run folders instead (--source folders --runs runs)") from None
    path = f"{entity}/{project}" if entity else project
    filters = {"group": group} if group else {}
    # every run's config and summary are read: fetch them with the listing instead of one request per run
    eager = {"lazy": False} if "lazy" in inspect.signature(api.runs).parameters else {}
    try:
        runs = list(api.runs(path, filters=filters, **eager))
    except Exception as err:  # noqa: BLE001
        raise ConfigError(f"W&B could not list runs of {path} ({str(err).splitlines()[0]}); check --project/--entity") from None
    if not runs:
        raise ConfigError(f"W&B project {path} has no runs" + (f" in group {group!r}" if group else "")
                          + "; check --project, --entity and --group")
    return frame(record_to_row(wandb_record(run), getattr(run, "url", None) or f"wandb:{path}/{run.id}") for run in runs)
