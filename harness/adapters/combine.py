"""Combining several runs' adapters into one (peft's add_weighted_adapter) and scoring the result on every run's
task: the combination types, their checks, the union adapter and the merge table. `harness.adapters.merge` (the
command) and `harness.adapters.merge_select` (weights and density chosen on validation) both build on it.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import Any

from harness.errors import ConfigError
from harness.results import now, write_json_atomic
from harness.runfolder import RunFolder

# the harness's name -> (peft's combination_type, what it combines)
TASK_VECTORS, FACTORS = "task vectors (B@A)", "factor-wise (A and B separately)"
COMBINE_FORMS = {
    "linear": ("cat", TASK_VECTORS), "cat": ("cat", TASK_VECTORS), "svd": ("svd", TASK_VECTORS),
    "ties": ("ties_svd", TASK_VECTORS), "ties_svd": ("ties_svd", TASK_VECTORS),
    "dare_ties": ("dare_ties_svd", TASK_VECTORS), "dare_ties_svd": ("dare_ties_svd", TASK_VECTORS),
    "dare_linear": ("dare_linear_svd", TASK_VECTORS), "dare_linear_svd": ("dare_linear_svd", TASK_VECTORS),
    "magnitude_prune": ("magnitude_prune_svd", TASK_VECTORS), "magnitude_prune_svd": ("magnitude_prune_svd", TASK_VECTORS),
    **{f"{name}_factors": (name, FACTORS) for name in ("linear", "ties", "dare_ties", "dare_linear", "magnitude_prune")},
}
COMBINE_TYPES = tuple(COMBINE_FORMS)
SAME_RANK_TYPES = tuple(n for n, (_, form) in COMBINE_FORMS.items() if form == FACTORS)  # peft needs equal r
NEEDS_DENSITY = tuple(n for n, (peft_type, _) in COMBINE_FORMS.items() if peft_type.startswith(("ties", "dare", "magnitude")))
MERGE_FILE, TABLE_JSON, TABLE_MD = "merge.json", "merge_table.json", "merge_table.md"


def check_combinable(runs: list[RunFolder], combine: list[str]) -> None:
    """Everything peft's add_weighted_adapter would reject (or silently get wrong), as one line each."""
    if len(runs) < 2:
        raise ConfigError("--combine needs at least two runs; to merge one adapter into its base drop --combine")
    if len({r.path.resolve() for r in runs}) < len(runs):
        raise ConfigError("the same run is named twice; pass each run folder once")
    for run in runs:
        run.require_adapter("--combine")
        cfg = run.adapter_config
        if cfg.get("peft_type") != "LORA":
            raise ConfigError(f"run {run.name} is a {cfg.get('peft_type')} adapter; --combine works on LoRA-family "
                              f"adapters (lora, rslora, pissa, qlora)")
        if cfg.get("use_dora"):
            raise ConfigError(f"run {run.name} is DoRA: add_weighted_adapter does not combine its magnitude vectors; "
                              f"combine plain LoRA runs")
        if cfg.get("modules_to_save"):
            raise ConfigError(f"run {run.name} also trains {', '.join(cfg['modules_to_save'])} (modules_to_save, an "
                              f"encoder's classification head); peft cannot combine trained heads — combine causal-LM "
                              f"adapters, or merge this run alone (drop --combine)")
    first = runs[0]
    for run in runs[1:]:
        if (run.result["model"], run.result.get("model_fingerprint")) != (first.result["model"], first.result.get("model_fingerprint")):
            raise ConfigError(f"runs {first.name} ({first.result['model']}) and {run.name} ({run.result['model']}) "
                              f"have different base models; combine adapters trained on one base")
        if bool(run.quantization) != bool(first.quantization):
            raise ConfigError(f"runs {first.name} and {run.name} trained on differently quantised bases "
                              f"(qlora vs lora); combine runs of one kind")
    ranks = {r.name: r.adapter_config.get("r") for r in runs}
    fixed = [c for c in combine if c in SAME_RANK_TYPES]
    if fixed and len(set(ranks.values())) > 1:
        raise ConfigError(f"--combine {','.join(fixed)} needs equal ranks, got {ranks}; the task-vector forms "
                          f"(linear, ties, dare_ties, svd, ...) take mixed ranks")


def combine_runs(runs: list[RunFolder], combine: list[str], density: float, weights: list[float] | None,
                 evaluate: bool, out: Path, n_eval: int | None = None, union: RunFolder | None = None) -> dict[str, Any]:
    """Load every adapter on one base, add one combined adapter per combine type, save them, and (with
    `evaluate`) score base / own / combined / union on every run's task."""
    from peft import PeftModel

    check_combinable(runs, combine)
    weights = weights or [1.0] * len(runs)
    if len(weights) != len(runs):
        raise ConfigError(f"--weights has {len(weights)} values for {len(runs)} runs; give one per run")
    base, tokenizer, record = runs[0].load_base()
    names = [f"a{i}_{r.result['task']}" for i, r in enumerate(runs)]  # peft adapter names (no dots)
    model = PeftModel.from_pretrained(base, str(runs[0].saved), adapter_name=names[0])
    for name, run in zip(names[1:], runs[1:]):
        model.load_adapter(str(run.saved), adapter_name=name)
    timings = {}
    for kind in combine:
        t0 = time.perf_counter()
        model.add_weighted_adapter(names, weights, adapter_name=f"merged_{kind}", combination_type=COMBINE_FORMS[kind][0],
                                   density=density if kind in NEEDS_DENSITY else None)
        timings[kind] = round(time.perf_counter() - t0, 3)
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(str(out / "adapters"), selected_adapters=[f"merged_{k}" for k in combine],
                          save_embedding_layers=False)  # no embedding is adapted; "auto" would ask the hub
    table: dict[str, Any] = {
        "runs": [{"name": n, "run_id": r.name, "run_dir": str(r.path), "task": r.result["task"],
                  "method": r.result["method"], "r": r.adapter_config.get("r"), "weight": w}
                 for n, r, w in zip(names, runs, weights)],
        "base": record, "combine": combine, "density": density, "combine_s": timings,
        "combine_forms": {k: {"peft_combination_type": COMBINE_FORMS[k][0], "combines": COMBINE_FORMS[k][1]} for k in combine},
        "adapters_dir": str(out / "adapters"), "created_at": now(), "rows": [],
    }
    if evaluate:
        table["rows"], table["n_eval"] = score_all(model, tokenizer, runs, names, combine, n_eval, union), n_eval
        table["mean"] = summarise(table["rows"], combine)
        table["union"] = union and {"run_id": union.name, "method": union.result["method"], "task": union.result["task"]}
    write_json_atomic(out / TABLE_JSON, table)
    (out / TABLE_MD).write_text(markdown_table(table))
    return table


def union_model(union: RunFolder, runs: list[RunFolder], model):
    """The union run's model: another adapter on the loaded base, or its own fully fine-tuned weights."""
    if union.result["model"] != runs[0].result["model"]:
        raise ConfigError(f"--union run {union.name} is on {union.result['model']}, the adapters on "
                          f"{runs[0].result['model']}; train the union run on the same base model")
    if union.is_adapter:
        check_combinable([runs[0], union], [])  # same base, LoRA, no trained head: it loads beside the others
        model.load_adapter(str(union.saved), adapter_name="union")
        return None
    from harness.models import WEIGHT_DTYPES
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(str(union.saved), dtype=WEIGHT_DTYPES[union.result["precision"]])


def score_all(model, tokenizer, runs: list[RunFolder], names: list[str], combine: list[str], n_eval: int | None,
              union: RunFolder | None) -> list[dict[str, Any]]:
    """One row per run's task: scores of the base, the task's own adapter, each combined adapter, the union run."""
    from harness.tasks import get_task

    union_full = union_model(union, runs, model) if union is not None else None
    rows = []
    for name, run in zip(names, runs):
        task = get_task(run.task_cfg, run.cache)
        split = task.splits()["test"]
        if n_eval:
            split = split.select(range(min(n_eval, len(split))))
        train = run.eff["train"]
        kind = run.model_cfg.kind

        def score(m) -> float:
            outputs = task.predict(m, tokenizer, split, kind, train["eval_batch_size"], train["max_seq_len"])
            return float(task.score(outputs, list(split))[task.primary_metric])

        t0 = time.perf_counter()
        with model.disable_adapter():
            row = {"task": run.result["task"], "metric": task.primary_metric, "n": len(split), "base": score(model),
                   "own_recorded": run.result.get("score"), "merged": {}, "retention": {}}
        for column, adapter in [("own", name), *((k, f"merged_{k}") for k in combine), *([("union", "union")] if union else [])]:
            if column == "union" and union_full is not None:
                value = score(union_full)
            else:
                model.set_adapter(adapter)
                value = score(model)
            if column in ("own", "union"):
                row[column] = value
            else:
                row["merged"][column] = value
            if column != "own":
                row["retention"][column] = value / row["own"] if row["own"] else None
        row["eval_s"] = round(time.perf_counter() - t0, 1)
        rows.append(row)
        print(f"scored {row['task']}: own {row['own']:.3f}, merged "
              + ", ".join(f"{k} {v:.3f}" for k, v in row["merged"].items()), file=sys.stderr, flush=True)
    model.set_adapter(names[0])
    return rows


def summarise(rows: list[dict[str, Any]], combine: list[str]) -> dict[str, Any]:
    """Mean over tasks of each column, and mean retention (scores on different metrics average as fractions)."""
    def mean(values):
        values = [v for v in values if v is not None]
        return sum(values) / len(values) if values else None

    cols = ["base", "own"] + (["union"] if rows and "union" in rows[0] else [])
    summary = {c: mean(r[c] for r in rows) for c in cols}
    summary["merged"] = {k: mean(r["merged"][k] for r in rows) for k in combine}
    summary["retention"] = {k: mean(r["retention"].get(k) for r in rows) for k in list(combine) + (["union"] if "union" in cols else [])}
    return summary


def _fmt(value: float | None, pct: bool = False) -> str:
    if value is None:
        return "n/a"
    return f"{100 * value:.0f}%" if pct else f"{value:.3f}"


def markdown_table(table: dict[str, Any]) -> str:
    """The multi-task table: per task, each column's score; retention (combined / own) in brackets."""
    lines = [f"# Combined adapters on {table['base']['model']} ({table['base']['base']})", "",
             "Runs: " + ", ".join(f"`{r['run_id']}` (w={r['weight']})" for r in table["runs"]),
             f"Combine: {', '.join(table['combine'])}; density {table['density']}.",
             "Forms: " + "; ".join(f"{k} = {f['combines']} (peft `{f['peft_combination_type']}`)"
                                   for k, f in table.get("combine_forms", {}).items()) + ".", ""]
    if not table["rows"]:
        return "\n".join(lines + ["(not scored: pass --eval)", ""])
    has_union = "union" in table["rows"][0]
    head = ["task", "metric", "n", "base", "own adapter"] + [f"{k} (retention)" for k in table["combine"]]
    head += ["union (retention)"] if has_union else []
    lines += ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for row in table["rows"] + [dict(table["mean"], task="**mean**", metric="", n="")]:
        cells = [str(row["task"]), row["metric"], str(row["n"]), _fmt(row["base"]), _fmt(row["own"])]
        cells += [f"{_fmt(row['merged'][k])} ({_fmt(row['retention'][k], True)})" for k in table["combine"]]
        if has_union:
            cells.append(f"{_fmt(row['union'])} ({_fmt(row['retention']['union'], True)})")
        lines.append("| " + " | ".join(cells) + " |")
    lines += ["", "Own adapter and combined adapters are scored here on the same rows; `n` is rows per task."]
    return "\n".join(lines) + "\n"
