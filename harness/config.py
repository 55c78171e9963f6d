"""Run configuration: checks that fail fast with a one-line reason, axis normalisation, and the run identity.

A run's identity is a hash of its *effective* config: the keys that change what is trained and measured, after
normalising axes a method ignores (full FT has no rank or targets; IA3 and prompt methods have no rank). Two
configs that differ only in an ignored axis therefore get the same run folder and run once.
"""

from __future__ import annotations

import difflib
import functools
import hashlib
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from harness.assets import CONF_DIR, check_hub_model
from harness.distributed import SHARDED, STRATEGIES, world
from harness.errors import AssetError, ConfigError
from harness.hf_model import check_model  # also registers model=hf's resolvers (kind, hub_id, name from config.json)

# Keys that say where or how a run is reported, not what it is.
NON_IDENTITY_KEYS = ("hydra", "paths", "tracking", "name", "group", "rerun", "sweep", "seeds", "lr_search", "lr_widen", "selection_seed", "lr_halving", "lr_halving_rungs", "rung_step", "lr_protocol", "variants", "stages")
# Method keys that say how a method is searched or described, not what a run trains.
NON_IDENTITY_METHOD_KEYS = ("lr_grid", "resumable")
# Keys added after runs were recorded, at the value that behaves as before: left out of the effective config, so a
# run that does not use them keeps its id (and a committed sweep resumes) -- (group, key): neutral value.
NEUTRAL_DEFAULTS = {("task", "answer"): "generate"}
BUDGET_KEYS = ("train.max_steps", "train.epochs")
PRECISIONS = ("auto", "bf16", "bf16-mixed", "fp32", "fp16-mixed")
TRACKING_MODES = ("auto", "online", "offline", "disabled")


def effective_config(cfg: DictConfig) -> dict[str, Any]:
    """The resolved config minus reporting keys, with ignored axes set to None and defaults filled in."""
    keep = [k for k in cfg.keys() if k not in NON_IDENTITY_KEYS]
    eff = OmegaConf.to_container(OmegaConf.masked_copy(cfg, keep), resolve=True)
    method = eff["method"]
    for key in NON_IDENTITY_METHOD_KEYS:
        method.pop(key, None)
    if not method.get("has_rank", False):
        eff["r"] = eff["alpha"] = None
    elif method.get("has_alpha", True) is False:  # e.g. VeRA: a rank but no scaling numerator
        eff["alpha"] = None
    elif eff.get("alpha") is None and isinstance(eff.get("r"), int):
        eff["alpha"] = 2 * eff["r"]
    if method.get("peft_type") is None or method.get("uses_targets") is False:
        eff["targets"] = None
    if eff["train"].get("lr") is None:
        eff["train"]["lr"] = method.get("lr")
    if not eff.get("init_from"):
        eff.pop("init_from", None)  # absent, not null: runs that start from the base keep their identity
    else:  # the chain, not where its folders happen to lie (harness/lineage.py)
        from harness.lineage import parent_run_id

        eff["init_from"] = parent_run_id(eff["init_from"])
        if eff["train"].get("precision") == "auto":  # an earlier stage's merged update must not round away
            eff["train"]["precision"] = "bf16-mixed"
    for (group, key), neutral in NEUTRAL_DEFAULTS.items():
        if (eff.get(group) or {}).get(key) == neutral:
            eff[group].pop(key)
    _normalise_dist(eff)
    if eff["train"].get("precision") == "auto":
        # Trained weights keep float32 masters: in pure bf16 an AdamW step smaller than ~1/256 of a weight rounds
        # away (seen here: full FT at lr 5e-5 changed only ~6% of the weights). A frozen base can sit in bf16.
        eff["train"]["precision"] = "bf16-mixed" if method.get("peft_type") is None else "bf16"
    return eff


def _normalise_dist(eff: dict[str, Any]) -> None:
    """One process: no `dist` key, so single-process runs keep their identity, whatever the group says. Several (torchrun / accelerate
    launch): the strategy and the world size, which sets the global batch (`none` under a launcher is DDP). The
    world size is the launcher's, or `dist.gpus` before a launch (a SLURM sweep plans its runs in one process)."""
    dist = eff.get("dist") or {}
    size = world().size if world().size > 1 else int(dist.get("gpus") or 1)
    strategy = dist.get("strategy", "none")
    if size == 1:  # (a sharded strategy in one process is refused by validate)
        eff.pop("dist", None)
    else:  # launched, or to be launched (a SLURM sweep's head process plans runs of dist.gpus tasks)
        eff["dist"] = {"strategy": "ddp" if strategy == "none" else strategy, "world_size": size}


def config_hash(eff: dict[str, Any]) -> str:
    return hashlib.sha1(json.dumps(eff, sort_keys=True, default=str).encode()).hexdigest()[:8]


def run_id_of(eff: dict[str, Any]) -> str:
    """Readable and unique: task_model_method[_r16_qv]_s0_<hash of the effective config>."""
    parts = [eff["task"]["name"], eff["model"]["name"], eff["method"]["name"]]
    if eff["r"] is not None:
        parts.append(f"r{eff['r']}")
    if eff["targets"] is not None:
        parts.append(eff["targets"]["name"])
    parts += [f"s{eff['seed']}", config_hash(eff)]
    return "_".join(str(p) for p in parts)


def identity_of(eff: dict[str, Any], group: str | None) -> dict[str, Any]:
    """The fields that say which run a record belongs to (also written for runs that never trained)."""
    return {
        "run_id": run_id_of(eff), "model": eff["model"]["name"], "method": eff["method"]["name"],
        "task": eff["task"]["name"], "r": eff["r"], "alpha": eff["alpha"],
        "targets": eff["targets"]["name"] if eff["targets"] else None, "seed": eff["seed"],
        "config_hash": config_hash(eff), "group": group,
    }


@dataclass(frozen=True)
class RunSpec:
    """One run's config, resolved once (`resolve`) and passed down: what the run is (`effective`, also readable
    as attributes: `spec.train.lr` is the resolved rate), its identity, and the composed config `cfg` for the
    keys that say where and how it is reported (paths, tracking, name, group, rerun, rung_step, init_from's
    path, dist's launcher settings), which the effective config leaves out on purpose."""

    cfg: DictConfig
    effective: dict[str, Any]
    run_id: str
    config_hash: str
    identity: dict[str, Any]
    view: DictConfig = field(repr=False)

    @property
    def precision(self) -> str:
        """The precision the run computes in: the effective one, except that `train.precision=auto` on hardware
        without native bf16 (a CPU without AMX / AVX512-BF16, a GPU before Ampere) runs in fp32: emulated bf16
        matmuls measured 0.3 GFLOP/s against fp32's 129 on such a CPU. A quantised base (QLoRA) keeps bf16: its
        compute dtype is the method's own, and its memory is the point. The run id keeps `auto`'s bf16 resolution,
        as it leaves the device out, so a sweep planned on one machine finds its runs on another; the record's
        `precision` says what ran."""
        resolved = self.effective["train"]["precision"]
        quantized = bool(self.effective["method"].get("quantization"))  # QLoRA computes in its own bf16 dtype
        if self.cfg.train.get("precision") == "auto" and resolved.startswith("bf16") and not quantized \
                and not native_bf16():
            return "fp32"
        return resolved

    def __getattr__(self, name: str) -> Any:  # the effective config's groups: spec.train, spec.model, spec.task
        effective = self.__dict__.get("effective") or {}  # (absent while a copy is being built)
        if name.startswith("_") or name not in effective:
            raise AttributeError(name)
        return self.__dict__["view"][name]


@functools.cache
def native_bf16() -> bool:
    """Whether this machine computes bf16 natively: a CUDA GPU that supports it, or a CPU with AMX or AVX512-BF16
    (oneDNN's own check)."""
    import torch

    if torch.cuda.is_available():
        return bool(torch.cuda.is_bf16_supported())
    return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())


def fp32_compute_where_bf16_is_emulated(method: str) -> list[str]:
    """The override that makes QLoRA compute in fp32 on a machine without native bf16 (where its bf16 compute is
    emulated, minutes for a 3-step run): for runs that test plumbing, not speed (the CPU smoke, the estimator's
    tests). Empty for other methods and where bf16 is native."""
    return ["method.quantization.bnb_4bit_compute_dtype=float32"] if method == "qlora" and not native_bf16() else []


def resolve(cfg: DictConfig) -> RunSpec:
    """The run's spec: the effective config computed once, with the run id, hash and identity made from it."""
    eff = effective_config(cfg)
    view = OmegaConf.create(eff)
    OmegaConf.set_readonly(view, True)
    return RunSpec(cfg=cfg, effective=eff, run_id=run_id_of(eff), config_hash=config_hash(eff),
                   identity=identity_of(eff, cfg.get("group")), view=view)


def run_id(cfg: DictConfig) -> str:
    """The run id of a composed config (a spec's `run_id` where one exists)."""
    return run_id_of(effective_config(cfg))


def identity(cfg: DictConfig) -> dict[str, Any]:
    """The identity of a composed config (a spec's `identity` where one exists)."""
    return identity_of(effective_config(cfg), cfg.get("group"))


def _run_id_resolver(*, _root_: DictConfig) -> str:
    return run_id(_root_)


if not OmegaConf.has_resolver("run_id"):
    OmegaConf.register_new_resolver("run_id", _run_id_resolver)


def positive_int(value: Any, name: str, fix: str) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        raise ConfigError(f"{name} must be a positive integer, got {value!r}; {fix}")


def _positive_number(value: Any, name: str, fix: str) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0:
        raise ConfigError(f"{name} must be a positive number, got {value!r}; {fix}")


def resumable(method: Any) -> bool:
    """Whether a run of this method (its method config) can stop at a checkpoint and resume as if uninterrupted
    (a method file's `resumable: false` says not: AdaLoRA's checkpoints hold an adapter already cut to its rank
    pattern and none of the rank allocator's state)."""
    return bool(method.get("resumable", True))


def validate(cfg: DictConfig) -> RunSpec:
    """Check every value that can be checked without loading a model; return the run's spec (`resolve`)."""
    if cfg.model.source == "hf":  # before anything resolves the kind from model.path
        check_model(cfg.model.get("path"), need_kind=OmegaConf.is_interpolation(cfg.model, "kind"))
    if cfg.method.get("has_rank", False):
        positive_int(cfg.r, "r", "e.g. r=16")
        if cfg.alpha is not None:
            _positive_number(cfg.alpha, "alpha", "e.g. alpha=32, or alpha=null for 2*r")
    if isinstance(cfg.seed, bool) or not isinstance(cfg.seed, int) or cfg.seed < 0:
        raise ConfigError(f"seed must be a non-negative integer, got {cfg.seed!r}; e.g. seed=1")
    train = cfg.train
    check_budget(train)
    positive_int(train.batch_size, "train.batch_size", "e.g. train.batch_size=8")
    positive_int(train.grad_accum, "train.grad_accum", "e.g. train.grad_accum=1")
    positive_int(train.max_seq_len, "train.max_seq_len", "e.g. train.max_seq_len=256")
    lr = train.lr if train.lr is not None else cfg.method.lr
    _positive_number(lr, "train.lr", "e.g. train.lr=1e-4")
    if lr >= 1:
        raise ConfigError(f"train.lr={lr} is far too large for fine-tuning; use a value below 1, e.g. train.lr=1e-4")
    if train.precision not in PRECISIONS:
        raise ConfigError(f"train.precision must be one of {', '.join(PRECISIONS)}, got {train.precision!r}")
    if isinstance(train.eval_every, bool) or not isinstance(train.eval_every, int) or train.eval_every < 0:
        raise ConfigError(f"train.eval_every must be a non-negative integer (0 = off), got {train.eval_every!r}; "
                          "e.g. train.eval_every=50")
    positive_int(train.eval_subset, "train.eval_subset", "e.g. train.eval_subset=64")
    if train.get("gradient_checkpointing") and cfg.method.get("peft_type") == "PREFIX_TUNING":
        # Trainer switches checkpointing on after peft has wrapped the model; peft's prefix then meets the
        # recomputed attention with the wrong key/value length and fails with a shape error at the first step
        raise ConfigError("method=prefix cannot train with train.gradient_checkpointing=true (peft's prefix tuning "
                          "fails at the first step when checkpointing is switched on after wrapping, as Trainer "
                          "does); drop train.gradient_checkpointing=true or pick another method")
    if cfg.get("rung_step") and not resumable(cfg.method):
        raise ConfigError(f"method={cfg.method.name} cannot pause at rung_step={cfg.rung_step}: its checkpoints do not "
                          f"resume the same run (conf/method/{cfg.method.name}.yaml, resumable: false); drop rung_step")
    _check_numeric_knobs(cfg)
    _check_dist(cfg)
    positive_int(cfg.task.n_train, "task.n_train", "e.g. task.n_train=500")
    positive_int(cfg.task.n_eval, "task.n_eval", "e.g. task.n_eval=100")
    if cfg.tracking.mode not in TRACKING_MODES:
        raise ConfigError(f"tracking.mode must be one of {', '.join(TRACKING_MODES)}, got {cfg.tracking.mode!r}")
    check_writable(Path(cfg.paths.runs), "paths.runs")
    from harness.lineage import check_parent

    check_parent(cfg)
    if cfg.model.source == "hub":
        try:
            check_hub_model(cfg.model.name, cfg.model.hub_id)
        except AssetError as err:
            raise ConfigError(str(err)) from None
    return resolve(cfg)


def _check_dist(cfg: DictConfig) -> None:
    """The `dist` group: a known strategy, a launcher for a sharded one, its library, and QLoRA's FSDP storage."""
    dist = cfg.get("dist") or {}
    strategy = dist.get("strategy", "none")
    if strategy not in STRATEGIES:
        raise ConfigError(f"dist must be one of {', '.join(STRATEGIES)}, got {strategy!r}; e.g. dist=ddp")
    gpus = dist.get("gpus")
    if gpus is not None:
        positive_int(gpus, "dist.gpus", "e.g. dist.gpus=8, or dist.gpus=null for the launcher's count")
        if world().size > 1 and gpus != world().size:
            raise ConfigError(f"dist.gpus={gpus} but the launcher started {world().size} processes; pass "
                              f"dist.gpus={world().size} or leave it null")
    if world().size == 1 and (strategy in SHARDED or (gpus or 1) > 1):
        n = gpus or 2
        raise ConfigError(f"dist={strategy} dist.gpus={gpus} needs {n} processes but this is one; start it with a "
                          f"launcher, e.g. torchrun --nproc_per_node {n} -m harness.run dist={strategy}, or "
                          f"make sweep LAUNCHER=slurm_ddp")
    if strategy.startswith("zero"):
        import importlib.util

        if importlib.util.find_spec("deepspeed") is None:
            raise ConfigError(f"dist={strategy} needs DeepSpeed, which is not installed; pip install deepspeed, "
                              "or use dist=fsdp")
    quant = cfg.method.get("quantization") or {}
    if strategy.startswith("fsdp") and quant.get("load_in_4bit") and not quant.get("bnb_4bit_quant_storage"):
        # FSDP flattens parameters of one dtype per unit: 4-bit weights stored as uint8 beside bf16 adapters
        # cannot be sharded together (transformers' QLoRA + FSDP guide)
        raise ConfigError(f"dist={strategy} with a 4-bit base needs its storage dtype to match the compute dtype; "
                          "add method.quantization.bnb_4bit_quant_storage=bfloat16, or use dist=ddp")


def _in_range(value: Any, name: str, low: float, high: float, fix: str, *, low_open: bool = False,
              high_open: bool = False) -> None:
    ok = isinstance(value, (int, float)) and not isinstance(value, bool) and \
        (value > low if low_open else value >= low) and (value < high if high_open else value <= high)
    if not ok:
        span = f"{'(' if low_open else '['}{low:g}, {high:g}{')' if high_open else ']'}"
        raise ConfigError(f"{name} must be a number in {span}, got {value!r}; {fix}")


def _check_numeric_knobs(cfg: DictConfig) -> None:
    """The numeric knobs not checked above: each out-of-range value is one line before any work."""
    train = cfg.train
    _in_range(train.warmup_ratio, "train.warmup_ratio", 0, 1, "e.g. train.warmup_ratio=0.06", high_open=True)
    _in_range(train.weight_decay, "train.weight_decay", 0, 1, "e.g. train.weight_decay=0.0")
    if train.max_grad_norm is not None:
        _positive_number(train.max_grad_norm, "train.max_grad_norm", "e.g. train.max_grad_norm=1.0, or null for none")
    positive_int(train.logging_steps, "train.logging_steps", "e.g. train.logging_steps=10")
    if train.save_steps is not None:
        positive_int(train.save_steps, "train.save_steps", "e.g. train.save_steps=50, or null for no checkpoints")
    positive_int(train.eval_batch_size, "train.eval_batch_size", "e.g. train.eval_batch_size=32")
    task = cfg.task
    if task.get("max_new_tokens") is not None:
        positive_int(task.max_new_tokens, "task.max_new_tokens", "e.g. task.max_new_tokens=32")
    if task.get("min_confidence") is not None:
        _in_range(task.min_confidence, "task.min_confidence", 0, 1, "e.g. task.min_confidence=0.8")
    if task.get("data_seed") is not None and (isinstance(task.data_seed, bool) or not isinstance(task.data_seed, int)
                                              or task.data_seed < 0):
        raise ConfigError(f"task.data_seed must be a non-negative integer, got {task.data_seed!r}; e.g. task.data_seed=1234")
    for key, fix in (("n_people", "e.g. task.n_people=30"), ("bios_per_person", "e.g. task.bios_per_person=4")):
        if task.get(key) is not None:
            positive_int(task[key], f"task.{key}", fix)
    dropout = cfg.method.get("peft_kwargs", {}).get("lora_dropout") if cfg.method.get("peft_kwargs") else None
    if dropout is not None:
        _in_range(dropout, "method.peft_kwargs.lora_dropout", 0, 1, "e.g. method.peft_kwargs.lora_dropout=0.05",
                  high_open=True)


def check_budget(train: Any) -> None:
    """Exactly one of train.max_steps (optimizer steps) and train.epochs (passes over the training split)."""
    steps, epochs = train.get("max_steps"), train.get("epochs")
    if (steps is None) == (epochs is None):
        given = "both" if steps is not None else "neither"
        raise ConfigError(f"set exactly one of train.max_steps and train.epochs ({given} set); "
                          "e.g. train.epochs=2 train.max_steps=null")
    if steps is not None:
        positive_int(steps, "train.max_steps", "e.g. train.max_steps=100")
    else:
        _positive_number(epochs, "train.epochs", "e.g. train.epochs=2 or train.epochs=0.5")


def with_single_budget(overrides: list[str]) -> list[str]:
    """A budget given on the command line replaces the default one: `train.epochs=2` alone also nulls
    train.max_steps (and the reverse), so a user never has to unset the other key. Both given: left as they are,
    and `check_budget` names the conflict."""
    given = {key for key in BUDGET_KEYS for o in overrides if o.lstrip("+~").split("=", 1)[0] == key}
    if len(given) != 1:
        return overrides
    (other,) = set(BUDGET_KEYS) - given
    # beside the given key, not at the end: after a trailing `--cfg job` Hydra's parser refuses a positional
    at = next(i for i, o in enumerate(overrides) if o.lstrip("+~").split("=", 1)[0] in given)
    return [*overrides[:at + 1], f"{other}=null", *overrides[at + 1:]]


def check_writable(path: Path, name: str) -> None:
    """The nearest existing ancestor must be a writable folder (the run folder is created under it)."""
    probe = path.resolve()
    while not probe.exists():
        probe = probe.parent
    if not probe.is_dir() or not os.access(probe, os.W_OK | os.X_OK):
        raise ConfigError(f"{name}={path} is not writable (checked {probe}); choose a writable folder, e.g. {name}=./runs")


# ---- command-line overrides: one-line errors with "did you mean" before Hydra starts ----

def group_options(group: str) -> list[str]:
    return sorted(p.stem for p in (CONF_DIR / group).glob("*.yaml"))


def config_groups() -> list[str]:
    return sorted(p.name for p in CONF_DIR.iterdir() if p.is_dir() and p.name != "hydra")


def did_you_mean(word: str, choices: list[str]) -> str:
    close = difflib.get_close_matches(word, choices, n=1, cutoff=0.5)
    return f" (did you mean '{close[0]}'?)" if close else ""


def all_keys(node: Any, prefix: str = "") -> list[str]:
    """Dotted names of every key in a config, for suggestions."""
    keys = []
    if isinstance(node, dict):
        for k, v in node.items():
            keys.append(prefix + str(k))
            keys += all_keys(v, prefix + str(k) + ".")
    return keys
