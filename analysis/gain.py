"""Gain retention: each variant against full FT *and the cell's floor*, with intervals over seeds and test items.

- *Floor* of a cell: the best trivial baseline on validation. Records that carry `floor_name` / `floor_score` /
  `floor_val_score` (or `floors` {name: {validation, test}}) give it; older records give the untuned model
  (`base_score`) and, on chrF tasks, copying the input (`metrics.copy_chrf`), the larger on validation. A majority
  class is not in older records: the row names the floor used (`floor_name`, `floor_note`).
- *Raw retention* = method / full FT; *gain retention* = (method - floor) / (full FT - floor), both in percent.
  Claims are decided on gain retention.
- *Learned*: full FT's gain over the floor has a 95% lower bound above `MARGIN`. A cell that is not learned
  carries no verdict.
- *Reported seeds*: the variant's seeds at its selected rate minus the seed that ran the search when two or more
  others remain, or exactly the runs whose record says they were a held-out seed's search (analysis/choices.py
  reported_runs); full FT and the variant are then paired on the same seeds.
- Intervals: analysis/bootstrap.py (seeds then items, paired; seeds only where runs have no per-item records,
  said in `interval`).
"""

from __future__ import annotations

import json
import math
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from analysis import bootstrap as boot
from analysis.choices import reported_runs
from analysis.tables import FULL, KEYS, full_ft_reference, at_selected_lr, selection, variant_summary
from harness.items import read_items
from harness.runfolder import RESULT_FILE

MARGIN = 0.0  # full FT minus floor: its 95% lower bound must exceed this for the cell to count as learned

GAIN_COLUMNS = [*KEYS, "budget", "selected_lr", "lrs_tried", "n_seeds", "seeds", "seeds_reported", "seed_note",
                "n_items", "test_items", "primary_metric", "val_score", "score_mean", "score_low", "score_high", "floor_name",
                "floor_score", "floor_val", "floor_note", "reference", "ref_variant", "ref_score", "retention_mean",
                "retention_low", "retention_high", "gain_mean", "gain_low", "gain_high", "val_gain",
                "full_gain_mean", "full_gain_low", "full_gain_high", "learned", "interval", "grid_edge",
                "budget_mismatch", "collapsed_lrs", "note"]


@lru_cache(maxsize=4096)
def _record(source: str) -> dict[str, Any]:
    path = Path(source) / RESULT_FILE
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return {}


def _num(value: Any) -> float | None:
    return None if value is None or pd.isna(value) else float(value)


def floor_candidates(rec: dict[str, Any]) -> dict[str, tuple[float, float]]:
    """{floor name: (validation, test)} of one record: its recorded floors, the untuned model, and (chrF tasks of
    older records) copying the input."""
    out: dict[str, tuple[float, float]] = {}
    for name, scores in (rec.get("floors") or {}).items():
        if isinstance(scores, dict) and scores.get("validation") is not None and scores.get("test") is not None:
            out[name] = (float(scores["validation"]), float(scores["test"]))
    if rec.get("base_val_score") is not None and rec.get("base_score") is not None:
        out.setdefault("base", (float(rec["base_val_score"]), float(rec["base_score"])))
    metric = rec.get("primary_metric")
    copy_val, copy_test = ((rec.get("val_metrics") or {}).get(f"copy_{metric}"), (rec.get("metrics") or {}).get(f"copy_{metric}"))
    if copy_val is not None and copy_test is not None:
        out.setdefault("copy", (float(copy_val), float(copy_test)))
    return out


def cell_floor(records: list[dict[str, Any]]) -> dict[str, Any]:
    """The cell's floor: the records' own choice (`floor_name`, made on validation by the harness) when present,
    else the candidate with the best mean validation score (test scores are read only for the chosen one)."""
    chosen = [r for r in records if r.get("floor_name") and r.get("floor_score") is not None]
    if chosen:
        r = chosen[0]
        return {"floor_name": r["floor_name"], "floor_score": float(r["floor_score"]),
                "floor_val": float(r.get("floor_val_score") or math.nan), "floor_note": "recorded floor"}
    cands: dict[str, list[tuple[float, float]]] = {}
    for rec in records:
        for name, pair in floor_candidates(rec).items():
            cands.setdefault(name, []).append(pair)
    if not cands:
        return {"floor_name": "", "floor_score": math.nan, "floor_val": math.nan, "floor_note": "no floor recorded"}
    val = {n: float(np.mean([p[0] for p in pairs])) for n, pairs in cands.items()}
    name = max(sorted(val), key=lambda n: val[n])
    note = "older records: best on validation of " + ", ".join(sorted(cands))
    if records and records[0].get("task") == "classify" and "majority" not in cands:
        note += " (majority class not recorded)"
    return {"floor_name": name, "floor_score": float(np.mean([p[1] for p in cands[name]])), "floor_val": val[name],
            "floor_note": note}


def items_of(rows: list[dict[str, Any]] | None, who: str, split: str = "test"
                  ) -> tuple[tuple[str, ...], np.ndarray] | None:
    """(item ids, per-item stats) of `who`'s rows of `split` (test unless told) in a run's item records, in id
    order; None without any."""
    if rows is None:
        return None
    picked = sorted((r["id"], r["stats"]) for r in rows if r.get("split") == split and r.get("who") == who)
    if not picked:
        return None
    return tuple(i for i, _ in picked), np.asarray([s for _, s in picked], float)


def variant_arm(runs: pd.DataFrame, metric: str, split: str = "test") -> boot.Arm:
    """A variant's arm from its runs at the selected rate (one per reported seed): items where every run has them.
    `split="validation"` gives the arm on validation (val_score and the validation items: claim 16's curves)."""
    runs = runs.sort_values("seed")
    seeds = tuple(int(s) for s in runs["seed"])
    scores = runs["score" if split == "test" else "val_score"].to_numpy(float)
    per_run = [items_of(read_items(src) if Path(str(src)).is_dir() else None, "tuned", split)
               for src in runs["source"]]
    if per_run and all(p is not None for p in per_run) and len({p[0] for p in per_run}) == 1:
        return boot.Arm(metric, seeds, scores, per_run[0][0], np.stack([p[1] for p in per_run]))
    return boot.Arm(metric, seeds, scores)


def floor_arm(cell_runs: pd.DataFrame, floor: dict[str, Any], metric: str) -> boot.Arm:
    """The floor as an arm without seeds: its per-item stats from any run's records when they have them."""
    who = "base" if floor["floor_name"] == "base" else f"floor:{floor['floor_name']}"
    for src in cell_runs["source"]:
        found = items_of(read_items(src) if Path(str(src)).is_dir() else None, who)
        if found is not None:
            return boot.Arm(metric, (), np.array([floor["floor_score"]]), found[0], found[1][None])
    return boot.Arm(metric, (), np.array([floor["floor_score"]]))


def _pct(triple: tuple[float, float, float]) -> tuple[float, float, float]:
    return tuple(100 * x for x in triple)  # type: ignore[return-value]


class Study:
    """The arms of every variant (reported seeds) and floor of every cell, for the table and for pairwise rules."""

    def __init__(self, df: pd.DataFrame) -> None:
        self.runs = at_selected_lr(df, with_search=True)  # reported_runs below leaves the search seed out, and says so
        self.selection = selection(df).set_index(["cell", "variant"]) if len(df) else pd.DataFrame()
        self.summary = variant_summary(df)
        self.arms: dict[tuple[str, str], boot.Arm] = {}
        self.floors: dict[str, dict[str, Any]] = {}
        self.floor_arms: dict[str, boot.Arm] = {}
        self.seed_notes: dict[tuple[str, str], str] = {}
        self.test_items: dict[str, int | None] = {}  # the task's n_eval: how many test items the scores are over
        for (cell, variant), part in self.runs.groupby(["cell", "variant"], sort=False):
            sel = self.selection.loc[(cell, variant)]
            reported, note = reported_runs(part, [int(s) for s in str(sel["selection_seeds"]).split(",")
                                                  if s.strip()] if sel["n_lrs"] >= 2 else [])
            self.seed_notes[(cell, variant)] = note
            self.arms[(cell, variant)] = variant_arm(reported, str(part["primary_metric"].iloc[0]))
        for cell, part in self.runs.groupby("cell", sort=False):
            records = [_record(str(r["source"])) or {"task": r["task"], "base_score": _num(r.get("base_score")),
                                                     "base_val_score": _num(r.get("base_val_score"))}
                       for _, r in part.iterrows()]  # a W&B row has no folder: the frame's base scores
            self.floors[cell] = cell_floor(records)
            self.test_items[cell] = next((r["config"]["task"].get("n_eval") for r in records
                                          if isinstance((r.get("config") or {}).get("task"), dict)), None)
            self.floor_arms[cell] = floor_arm(part, self.floors[cell], str(part["primary_metric"].iloc[0]))

    def comparison(self, cell: str, variant: str, ref_variant: str) -> dict[str, boot.Arm]:
        return {"m": self.arms[(cell, variant)], "full": self.arms[(cell, ref_variant)],
                "floor": self.floor_arms[cell]}

    def difference(self, cell: str, a: str, b: str) -> tuple[float, float, float, str]:
        """a - b mean test score (reported seeds), paired where they share seeds (and items), with its interval."""
        res = boot.resample({"a": self.arms[(cell, a)], "b": self.arms[(cell, b)]})
        return (*boot.estimate(res, lambda x, y: x - y, "a", "b"), res.how)

    def table(self) -> pd.DataFrame:
        rows = [self._row(var) for _, var in self.summary.iterrows()]
        return pd.DataFrame(rows, columns=GAIN_COLUMNS)

    def _row(self, var: pd.Series) -> dict[str, Any]:
        cell, variant = var["cell"], var["variant"]
        sel = self.selection.loc[(cell, variant)]
        arm = self.arms[(cell, variant)]
        floor = self.floors[cell]
        row = {k: var[k] for k in KEYS} | floor | {
            "budget": var["budget"], "selected_lr": sel["selected_lr"], "lrs_tried": sel["lrs_tried"],
            "n_seeds": int(var["n"]), "seeds": var["seeds"], "seeds_reported": ",".join(map(str, arm.seeds)),
            "seed_note": self.seed_notes[(cell, variant)], "primary_metric": var["primary_metric"],
            "val_score": var["val_score"], "grid_edge": bool(sel["grid_edge"]), "collapsed_lrs": sel["collapsed_lrs"],
            "budget_mismatch": False, "learned": False, "test_items": self.test_items.get(cell)}
        notes = [n for n in [sel["selection_note"] if sel["selection_note"] != "one rate tried" else "",
                             "grid edge: widen the grid" if sel["grid_edge"] else ""] if n]
        ref, mismatch = full_ft_reference(self.summary, cell, var["budget"])
        if ref is None:  # no retention; a comparison between two methods (claims 9, 19) still needs a learned
            # cell: here judged on this arm itself, its 95% lower bound above the floor
            res = boot.resample({"m": arm})
            _, low, high = boot.estimate(res, lambda m: m, "m")
            return row | {"score_mean": res.point["m"], "score_low": low, "score_high": high, "interval": res.how,
                          "n_items": res.n_items, "learned": bool(low > floor["floor_score"] + MARGIN),
                          "note": "; ".join(notes + ["no full-FT run on this task/model/data (learned: this arm's "
                                                     "lower bound above the floor)"])}
        if mismatch:
            notes.append(f"budget differs from full FT's ({var['budget']} vs {ref['budget']})")
        arms = self.comparison(cell, variant, ref["variant"])
        res = boot.resample(arms)
        _, low, high = boot.estimate(res, lambda m: m, "m")
        full_gain = boot.estimate(res, lambda f, l: f - l, "full", "floor")
        floor_val = floor["floor_val"]
        ref_val = float(self.summary[(self.summary["cell"] == cell) & (self.summary["variant"] == ref["variant"])]["val_score"].iloc[0])
        row |= {"reference": ref["label"], "ref_variant": ref["variant"], "ref_score": res.point["full"],
                "budget_mismatch": mismatch, "score_mean": res.point["m"], "score_low": low, "score_high": high,
                "interval": res.how, "n_items": res.n_items,
                "full_gain_mean": full_gain[0], "full_gain_low": full_gain[1], "full_gain_high": full_gain[2],
                "learned": bool(full_gain[1] > MARGIN),
                "val_gain": 100 * float(boot.gain_ratio(var["val_score"], ref_val, floor_val))}
        if not row["learned"]:
            notes.append("not learned: full FT does not clear the floor" + (
                "" if math.isfinite(full_gain[1]) else " (no interval)"))
        if variant == ref["variant"]:
            return row | {"retention_mean": 100.0, "retention_low": math.nan, "retention_high": math.nan,
                          "gain_mean": 100.0, "gain_low": math.nan, "gain_high": math.nan,
                          "note": "; ".join(["reference"] + notes)}
        raw = _pct(boot.estimate(res, _ratio, "m", "full"))
        gain = _pct(boot.estimate(res, boot.gain_ratio, "m", "full", "floor"))
        return row | {"retention_mean": raw[0], "retention_low": raw[1], "retention_high": raw[2],
                      "gain_mean": gain[0], "gain_low": gain[1], "gain_high": gain[2], "note": "; ".join(notes)}


def _ratio(m, f):
    """method / full FT, NaN where full FT scored 0 (a tiny or failed run: no retention to speak of)."""
    with np.errstate(divide="ignore", invalid="ignore"):
        out = np.divide(np.asarray(m, dtype=float), np.asarray(f, dtype=float))
    return np.where(np.isfinite(out), out, np.nan) if np.ndim(out) else (float(out) if np.isfinite(out) else math.nan)


def gain_table(df: pd.DataFrame) -> tuple[pd.DataFrame, Study]:
    """The gain-retention table of every variant at its selected rate, and the study's arms behind it."""
    study = Study(df)
    return study.table(), study


def is_full(row: pd.Series) -> bool:
    return row["method"] == FULL
