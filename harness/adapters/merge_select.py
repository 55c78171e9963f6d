"""Multi-task merges whose weight and density are chosen on validation, then scored once on test.

    python -m harness.adapters.merge RUN_A RUN_B RUN_C --combine ties,dare_ties,linear --select \
        [--grid-weights 0.5,1.0,1.5] [--grid-density 0.2,0.5,0.8] [--n-val 200] [--n-test 200] [--union RUN_U]

For every combine type, every grid point (one weight for every adapter; a density for the types that prune:
ties, dare_*, magnitude_prune) is built with peft's `add_weighted_adapter` and scored on each task's VALIDATION
rows. The point with the highest mean validation retention (merged / own adapter, both on validation; ties: the
first in grid order) is kept; only then are the base, each own adapter, the union run and each chosen merge
scored on each task's TEST rows. `merge_table.json` records the whole validation grid, the chosen point per type
and the test scores; nothing on the test side feeds back into a choice (tests/test_merge.py reverses test scores
and checks the choice does not move). DARE's random drops are seeded per grid point, so the merge that was
validated is the one that is tested.
"""

from __future__ import annotations

import itertools
import sys
import time
from pathlib import Path
from typing import Any

import torch
from omegaconf import OmegaConf

from harness.errors import ConfigError
from harness.results import now, write_json_atomic
from harness.runfolder import RunFolder

GRID_WEIGHTS, GRID_DENSITY = (0.5, 1.0, 1.5), (0.2, 0.5, 0.8)
DARE_SEED = 0


def eval_split(run: RunFolder, which: str, n: int | None):
    """The first `n` rows of a run's task split ('validation' or 'test'); the run's own n_eval when n is None.
    `n` larger than the run's n_eval reads further into the task's pool (up to its size)."""
    from harness.tasks import get_task

    cfg = run.task_cfg if n is None else OmegaConf.merge(run.task_cfg, {"n_eval": int(n)})
    task = get_task(cfg, run.cache)
    return task, task.splits()[which]


def score_split(model, tokenizer, run: RunFolder, which: str, n: int | None) -> float:
    """The task's primary metric of `model` on the run's `which` split (one place both phases score through)."""
    task, split = eval_split(run, which, n)
    train = run.eff["train"]
    outputs = task.predict(model, tokenizer, split, run.model_cfg.kind, train["eval_batch_size"], train["max_seq_len"])
    return float(task.score(outputs, list(split))[task.primary_metric])


def grid_points(kind: str, weights: list[float], densities: list[float], needs_density: bool) -> list[dict[str, Any]]:
    return [{"weight": w, "density": d} for w, d in itertools.product(weights, densities if needs_density else [None])]


def mean_retention(scores: list[float], own: list[float]) -> float | None:
    values = [s / o for s, o in zip(scores, own) if o]
    return sum(values) / len(values) if values else None


def choose(grid: list[dict[str, Any]]) -> int:
    """Index of the grid point with the highest mean validation retention (ties and undefined: first in order).
    Reads `val_retention` only."""
    keys = [g["val_retention"] if g["val_retention"] is not None else float("-inf") for g in grid]
    return max(range(len(grid)), key=lambda i: (keys[i], -i))


def _add(model, names: list[str], kind: str, point: dict[str, Any], adapter: str, forms: dict) -> None:
    torch.manual_seed(DARE_SEED)  # DARE drops at random: the validated merge is rebuilt bit for bit
    model.add_weighted_adapter(names, [point["weight"]] * len(names), adapter_name=adapter,
                               combination_type=forms[kind][0], density=point["density"])


def select_and_score(runs: list[RunFolder], combine: list[str], weights: list[float], densities: list[float],
                     out: Path, n_val: int | None, n_test: int | None, union: RunFolder | None = None) -> dict[str, Any]:
    """Validation grid per combine type, the chosen point, then test scores of base / own / union / chosen."""
    from peft import PeftModel

    from harness.adapters.merge import COMBINE_FORMS, NEEDS_DENSITY, TABLE_JSON, TABLE_MD, check_combinable

    check_combinable(runs, combine)
    if not weights or any(w <= 0 for w in weights) or not densities or any(not 0 < d <= 1 for d in densities):
        raise ConfigError(f"--grid-weights must be positive and --grid-density in (0, 1], got {weights} / {densities}")
    base, tokenizer, record = runs[0].load_base()
    names = [f"a{i}_{r.result['task']}" for i, r in enumerate(runs)]
    model = PeftModel.from_pretrained(base, str(runs[0].saved), adapter_name=names[0])
    for name, run in zip(names[1:], runs[1:]):
        model.load_adapter(str(run.saved), adapter_name=name)
    t0 = time.perf_counter()
    own_val = []
    for name, run in zip(names, runs):
        model.set_adapter(name)
        own_val.append(score_split(model, tokenizer, run, "validation", n_val))
    selection: dict[str, Any] = {}
    for kind in combine:
        grid = grid_points(kind, weights, densities, kind in NEEDS_DENSITY)
        for i, point in enumerate(grid):
            _add(model, names, kind, point, f"grid_{i}", COMBINE_FORMS)
            model.set_adapter(f"grid_{i}")
            point["val"] = [score_split(model, tokenizer, run, "validation", n_val) for run in runs]
            point["val_retention"] = mean_retention(point["val"], own_val)
            model.set_adapter(names[0])
            model.delete_adapter(f"grid_{i}")
        best = choose(grid)
        _add(model, names, kind, grid[best], f"merged_{kind}", COMBINE_FORMS)
        selection[kind] = {"chosen": {k: grid[best][k] for k in ("weight", "density", "val_retention")}, "grid": grid}
        print(f"{kind}: chosen on validation weight {grid[best]['weight']}, density {grid[best]['density']} "
              f"(mean validation retention {grid[best]['val_retention']})", file=sys.stderr, flush=True)
    select_s = round(time.perf_counter() - t0, 1)
    rows = score_test(model, tokenizer, runs, names, combine, n_test, union)
    for row, own in zip(rows, own_val):
        row["own_val"] = own
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(str(out / "adapters"), selected_adapters=[f"merged_{k}" for k in combine])
    table = {
        "protocol": "weight and density chosen per combine type on validation (mean retention vs own adapter); "
                    "test scored once, after the choice",
        "runs": [{"name": n, "run_id": r.name, "run_dir": str(r.path), "task": r.result["task"],
                  "method": r.result["method"], "r": r.adapter_config.get("r")} for n, r in zip(names, runs)],
        "base": record, "combine": combine, "grid_weights": weights, "grid_density": densities,
        "n_val": [len(eval_split(r, "validation", n_val)[1]) for r in runs], "n_test": [row["n"] for row in rows],
        "selection": selection, "select_s": select_s,
        "combine_forms": {k: {"peft_combination_type": COMBINE_FORMS[k][0], "combines": COMBINE_FORMS[k][1]} for k in combine},
        "union": union and {"run_id": union.name, "method": union.result["method"], "task": union.result["task"]},
        "adapters_dir": str(out / "adapters"), "created_at": now(), "rows": rows,
    }
    write_json_atomic(out / TABLE_JSON, table)
    (out / TABLE_MD).write_text(markdown(table))
    return table


def score_test(model, tokenizer, runs: list[RunFolder], names: list[str], combine: list[str], n_test: int | None,
               union: RunFolder | None) -> list[dict[str, Any]]:
    """Test scores, per task, of the base, the task's own adapter, the union run and each chosen merge."""
    from harness.adapters.merge import union_model

    union_full = union_model(union, runs, model) if union is not None else None
    rows = []
    for name, run in zip(names, runs):
        task, split = eval_split(run, "test", n_test)
        with model.disable_adapter():
            row = {"task": run.result["task"], "metric": task.primary_metric, "n": len(split),
                   "base": score_split(model, tokenizer, run, "test", n_test), "merged": {}, "retention": {}}
        model.set_adapter(name)
        row["own"] = score_split(model, tokenizer, run, "test", n_test)
        for kind in combine:
            model.set_adapter(f"merged_{kind}")
            row["merged"][kind] = score_split(model, tokenizer, run, "test", n_test)
        if union is not None:
            if union_full is None:
                model.set_adapter("union")
            row["union"] = score_split(union_full if union_full is not None else model, tokenizer, run, "test", n_test)
        for column, value in [*row["merged"].items(), *([("union", row["union"])] if union else [])]:
            row["retention"][column] = value / row["own"] if row["own"] else None
        rows.append(row)
    model.set_adapter(names[0])
    return rows


def markdown(table: dict[str, Any]) -> str:
    fmt = lambda v: "n/a" if v is None else f"{v:.3f}"  # noqa: E731
    lines = [f"# Merges chosen on validation ({table['base']['model']})", "", table["protocol"] + ".", "",
             f"Grid: weights {table['grid_weights']} (one for every adapter), density {table['grid_density']}; "
             f"validation rows per task {table['n_val']}, test rows {table['n_test']}.", "",
             "| combine | chosen weight | chosen density | mean validation retention |", "|---|---|---|---|"]
    for kind, sel in table["selection"].items():
        c = sel["chosen"]
        lines.append(f"| {kind} | {c['weight']} | {c['density'] if c['density'] is not None else '-'} | {fmt(c['val_retention'])} |")
    has_union = bool(table["rows"]) and "union" in table["rows"][0]
    head = ["task", "metric", "n test", "base", "own adapter", *table["combine"], *(["union"] if has_union else [])]
    lines += ["", "Test scores:", "", "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for row in table["rows"]:
        cells = [row["task"], row["metric"], str(row["n"]), fmt(row["base"]), fmt(row["own"])]
        cells += [fmt(row["merged"][k]) for k in table["combine"]] + ([fmt(row["union"])] if has_union else [])
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"
