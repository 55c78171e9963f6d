"""Runs that start from another run's trained weights (`init_from=<run folder>`): continual learning as a chain
of ordinary run folders.

    python -m harness.run task=classify method=lora r=8                       # stage 1
    python -m harness.run task=extract method=lora r=8 init_from=runs/<stage 1 run_id>

A stage loads the pre-trained base, applies every ancestor's change root first (an adapter is merged into the
weights, a full fine-tune's saved weights are loaded), and then trains as any run does: a new adapter of its
own method on top, or every weight for full FT. Its record names the chain (`init_from`), and after training it
also scores every earlier stage's task on that task's own test split (`earlier_tasks`), so forgetting of the
earlier tasks is read from the last stage's folder. `sweeps/study/continual.yaml` builds such chains (`stages:` in a
sweep file, harness/sweeper.py).

A stage's identity holds its parent's run_id (whose own identity holds its parent's), so a chain is one identity
and moving the folders does not change it. With train.precision=auto a stage keeps float32 weights
(bf16-mixed): merged into bfloat16 weights, an earlier adapter's update partly rounds away (`python -m
harness.adapters.merge --dtype bfloat16` measures this on any run: argmax agreement and logit difference), and
the next stage would start from weights no earlier stage produced.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from harness.errors import ConfigError
from harness.results import Status
from harness.runfolder import is_run_folder, read_record

# prompt-learning adapters add inputs, not weights: nothing to merge into a base that the next stage trains
UNMERGEABLE = ("PREFIX_TUNING", "PROMPT_TUNING", "P_TUNING")


def parent_run_id(init_from: str | None) -> str | None:
    """The identity of a stage's start: the parent's run_id, or the path as given while it has no record."""
    if not init_from:
        return None
    result = read_record(Path(init_from))
    return (result or {}).get("run_id") or str(init_from)


def ancestry(init_from: str | Path) -> list[Path]:
    """The run folders a stage starts from, root first, ending with `init_from` itself."""
    chain, seen = [], set()
    path: Path | None = Path(init_from)
    while path is not None:
        resolved = path.resolve()
        if resolved in seen:
            raise ConfigError(f"init_from chain loops at {path}; every stage must start from an earlier run")
        seen.add(resolved)
        chain.append(path)
        link = (read_record(path) or {}).get("init_from") or {}
        path = _locate(link, path) if link else None
    return chain[::-1]


def _locate(link: dict[str, Any], child: Path) -> Path:
    """A parent's folder: where the record says, or (records copied elsewhere) the child's sibling of that run_id."""
    recorded = Path(link.get("path") or "")
    if is_run_folder(recorded):
        return recorded
    sibling = child.parent / str(link.get("run_id"))
    if is_run_folder(sibling):
        return sibling
    raise ConfigError(f"{child.name} starts from {link.get('run_id')}, found neither at {recorded} nor beside it; "
                      "keep a chain's run folders together")


def check_parent(cfg: Any) -> None:
    """Every way `init_from` can be unusable, as one line, before any work."""
    init_from = cfg.get("init_from")
    if not init_from:
        return
    path = Path(init_from)
    result = read_record(path)
    if result is None:
        raise ConfigError(f"init_from={init_from} holds no readable result.json; pass a finished run folder "
                          "(paths.runs/<run_id>)")
    if result.get("status") != Status.OK.value or not result.get("saved_to") or not (path / result["saved_to"]).is_dir():
        raise ConfigError(f"init_from={init_from} has status {result.get('status')!r} and no saved weights; "
                          "start from a run that finished ok")
    if result.get("model") != cfg.model.name:
        raise ConfigError(f"init_from={init_from} trained model={result.get('model')}, this run model={cfg.model.name}; "
                          f"a stage must continue the same model (model={result.get('model')})")
    parent_method = (result.get("config") or {}).get("method") or {}
    if parent_method.get("peft_type") in UNMERGEABLE:
        raise ConfigError(f"init_from={init_from} is a {result.get('method')} run, whose virtual tokens cannot be "
                          "merged into weights; start from a LoRA-family, IA3 or full fine-tuning run")
    if result.get("quantization") or cfg.method.get("quantization"):
        raise ConfigError("init_from does not chain quantised runs (a merged NF4 base is no longer NF4); "
                          "use method=lora instead of qlora for continual stages")
    if cfg.model.kind == "encoder" and result.get("task") != cfg.task.name:
        raise ConfigError(f"init_from={init_from} trained an encoder head for task={result.get('task')}; an "
                          f"encoder's classification head belongs to its task, so stage task={cfg.task.name} "
                          "cannot continue it (chain causal LMs, e.g. model=smollm2-135m)")
    for ancestor in ancestry(path)[:-1]:
        if (read_record(ancestor) or {}).get("status") != Status.OK.value:
            raise ConfigError(f"init_from={init_from} descends from {ancestor}, which is missing or did not finish ok")


def changed_linear_names(model) -> list[str]:
    """Names of the linear layers a peft model adapts (its BaseTunerLayers around nn.Linear)."""
    from peft.tuners.tuners_utils import BaseTunerLayer
    from torch import nn

    return [n.removeprefix("base_model.model.") for n, m in model.named_modules()
            if isinstance(m, BaseTunerLayer) and isinstance(m.get_base_layer(), nn.Linear)]


def apply_run(model, run_dir: Path, saved_to: str) -> tuple[Any, list[str]]:
    """`model` with one run's change applied: its adapter merged into the weights (in the weights' dtype), or its
    saved full weights loaded. Returns the model and the names of the linear matrices the run changed."""
    saved = Path(run_dir) / saved_to
    if saved_to == "adapter":
        from peft import PeftModel

        wrapped = PeftModel.from_pretrained(model, saved)
        names = changed_linear_names(wrapped)
        return wrapped.merge_and_unload(), names
    from safetensors.torch import load_file

    from harness.assets import CONF_DIR
    from harness.methods import resolve_targets
    from omegaconf import OmegaConf

    state: dict[str, Any] = {}
    for file in sorted(saved.glob("*.safetensors")):
        state |= load_file(file)
    if not state:
        raise ConfigError(f"{saved} holds no safetensors weights; re-run {Path(run_dir).name}")
    missing, unexpected = model.load_state_dict(state, strict=False)
    tied = _tied_names(model)
    if unexpected or set(missing) - tied:
        raise ConfigError(f"{saved} does not fit this model ({len(unexpected)} unexpected and "
                          f"{len(set(missing) - tied)} missing tensors); it was saved by another model")
    return model, resolve_targets(model, OmegaConf.load(CONF_DIR / "targets" / "all-linear.yaml"))


def _tied_names(model) -> set[str]:
    """State-dict names whose tensor is another name's (tied embeddings): save_pretrained writes one of them."""
    first: dict[int, str] = {}
    tied = set()
    for name, tensor in model.state_dict(keep_vars=True).items():
        ptr = tensor.data_ptr()
        if ptr in first:
            tied |= {name, first[ptr]}
        else:
            first[ptr] = name
    return tied


def apply_chain(model, run_dirs: list[Path]) -> tuple[Any, list[str]]:
    """`model` with every run's change applied in order; the union of the linear matrices they changed."""
    names: list[str] = []
    for run_dir in run_dirs:
        result = read_record(run_dir) or {}
        model, changed = apply_run(model, run_dir, result["saved_to"])
        names += [n for n in changed if n not in names]
    return model, names


def start_from(model, init_from: str | Path) -> tuple[Any, dict[str, Any]]:
    """The stage's starting model (the base with every ancestor applied) and the record's `init_from` entry."""
    chain = ancestry(init_from)
    model, _ = apply_chain(model, chain)
    records = [read_record(p) or {} for p in chain]
    parent = records[-1]
    return model, {
        "run_id": parent.get("run_id"), "path": str(init_from), "parent_finished_at": parent.get("finished_at"),
        "chain": [{"run_id": r.get("run_id"), "task": r.get("task"), "method": r.get("method"), "r": r.get("r"),
                   "path": str(p)} for r, p in zip(records, chain)],
        "root_forgetting_before": records[0].get("forgetting_before"),
        "dtype": str(next(model.parameters()).dtype).removeprefix("torch."),
    }


def score_earlier_tasks(init: dict[str, Any], score_task) -> list[dict[str, Any]]:
    """Each ancestor's task scored on its own test split by the current model: `score_task(task_cfg)` returns
    (metrics, primary metric). Kept beside the score that stage reached and the untuned model's."""
    from omegaconf import OmegaConf

    rows = []
    for link in init["chain"]:
        record = read_record(Path(link["path"])) or {}
        metrics, primary = score_task(OmegaConf.create(record["config"]["task"]))
        now, then, base = metrics[primary], record.get("score"), record.get("base_score")
        rows.append({"run_id": link["run_id"], "task": link["task"], "primary_metric": primary, "score_now": now,
                     "score_at_stage": then, "base_score": base, "metrics": metrics,
                     "retained": (now / then) if then else None,
                     # the share of what that stage learned (score_at_stage - base) that is gone
                     "forgotten_gain": ((then - now) / (then - base)) if then is not None and base is not None
                     and then != base else None})
    return rows
