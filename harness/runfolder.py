"""A run's folder, read one way. Every tool that works on finished runs (merging, the serving benchmark, the
estimator's check, the intruder and continual analyses, the report's tables, the sweeper's resume, continual
stages) finds and opens run folders through this module, so a change to the folder's layout is made here once.

    <paths.runs>/<run_id>/
        result.json          the record (harness/results.py describes every field)
        adapter/ | model/    what the run saved (`saved_to` in the record): a peft adapter, or full FT's weights
        .hydra/config.yaml   Hydra's composed config (where the run's cache was: paths.cache is not in the record)
        run.log, checkpoints/ (while unfinished), wandb/ (offline W&B)
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from harness.assets import cache_dir
from harness.errors import ConfigError
from harness.results import RESULT_FILE, read_json

HYDRA_CONFIG = Path(".hydra") / "config.yaml"
# Folders a run writes that never hold another run's record: not walked.
SKIP_DIRS = {"wandb", "checkpoints", "adapter", "model", "adapter.partial", "model.partial", ".hydra"}


def read_record(folder: str | Path) -> dict[str, Any] | None:
    """The folder's result.json, or None when it has none (or a file that does not parse)."""
    return read_json(Path(folder) / RESULT_FILE)


def is_run_folder(path: str | Path) -> bool:
    return (Path(path) / RESULT_FILE).exists()


def find_runs(roots: Sequence[str | Path]) -> list[Path]:
    """Every run folder under the given folders (a root may itself be one), walked in sorted order, without
    entering what a run writes (SKIP_DIRS) or hidden folders. A root that is not a folder is a ConfigError."""
    found: list[Path] = []
    for root in map(Path, roots):
        if not root.is_dir():
            raise ConfigError(f"runs folder {root} does not exist; pass the folder your runs went to, e.g. runs/")
        for folder, dirs, files in os.walk(root):
            dirs[:] = sorted(d for d in dirs if d not in SKIP_DIRS and not d.startswith("."))
            if RESULT_FILE in files:
                found.append(Path(folder))
    return found


@dataclass
class RunFolder:
    """A run folder with a readable record: the record, its effective config, the composed config and the
    harness cache the run used."""

    path: Path
    result: dict[str, Any]
    eff: dict[str, Any]           # the effective config (result.json's `config`): what identifies the run
    composed: DictConfig          # Hydra's composed config when saved, else the effective one
    cache: Path

    @property
    def name(self) -> str:
        return self.result.get("run_id") or self.path.name

    def require_adapter(self, what: str) -> None:
        """A one-line ConfigError unless the run saved an adapter (`what` names what needs one)."""
        if not self.is_adapter:
            raise ConfigError(f"run {self.name} is {self.result.get('method')} (it saved a whole model, no adapter); "
                              f"{what} needs an adapter run, e.g. method=lora")

    @property
    def model_cfg(self) -> DictConfig:
        return OmegaConf.create(self.eff["model"])

    @property
    def task_cfg(self) -> DictConfig:
        return OmegaConf.create(self.eff["task"])

    @property
    def saved(self) -> Path | None:
        """adapter/ or model/: what the run saved (None when it saved nothing)."""
        return self.path / self.result["saved_to"] if self.result.get("saved_to") else None

    @property
    def is_adapter(self) -> bool:
        return self.result.get("saved_to") == "adapter"

    @property
    def quantization(self) -> dict[str, Any] | None:
        return self.result.get("quantization")  # None: an unquantised base

    @cached_property
    def adapter_config(self) -> dict[str, Any]:
        """peft's adapter_config.json ({} for a run that saved a whole model)."""
        return json.loads((self.saved / "adapter_config.json").read_text()) if self.is_adapter else {}

    def load_base(self, *, dequantize: bool = False):
        """(model, tokenizer, record) for the base the run trained on. A quantised base loads quantised as in
        training, or, with `dequantize`, de-quantised from those 4-bit weights into its compute dtype."""
        import torch

        from harness.quantization import quantization_config
        from harness.models import WEIGHT_DTYPES, load_model, load_tokenizer
        from harness.tasks import get_task

        precision = self.result.get("precision") or self.eff["train"]["precision"]
        labels = get_task(self.task_cfg, self.cache).labels if self.model_cfg.kind == "encoder" else None
        tokenizer = load_tokenizer(self.model_cfg, self.cache)
        qconfig = quantization_config(self.eff) if self.quantization else None
        model = load_model(self.model_cfg, self.cache, precision=precision, tokenizer=tokenizer, labels=labels,
                           quantization_config=qconfig)
        record = {"model": self.result["model"], "model_fingerprint": self.result.get("model_fingerprint"),
                  "precision": precision, "dtype": str(WEIGHT_DTYPES[precision]).removeprefix("torch.")}
        if qconfig is not None:
            q = self.quantization
            if dequantize:
                dtype = getattr(torch, q.get("compute_dtype") or "bfloat16")
                model = model.dequantize(dtype=dtype)
                model.is_loaded_in_4bit = model.is_loaded_in_8bit = False  # transformers leaves the flags set
                name = str(dtype).removeprefix("torch.")
                record |= {"dtype": name, "base": f"{q['bits']}-bit {q.get('quant_type') or 'int8'} weights the adapter "
                                                  f"trained on, de-quantised to {name}"}
            else:
                record["base"] = f"{q['bits']}-bit {q.get('quant_type') or 'int8'} (as in training)"
            record["quantization"] = q
        else:
            record["base"] = f"{self.result['model']} in {record['dtype']} (as in training)"
        return model, tokenizer, record


def open_run(path: str | Path, *, finished: bool = False) -> RunFolder:
    """Read a run folder; every way it can be unusable is a one-line ConfigError. `finished`: it must have
    ended `ok` and saved its adapter or model, and that folder must be there."""
    path = Path(path)
    if not path.is_dir():
        raise ConfigError(f"run folder {path} does not exist; pass a folder under paths.runs that holds {RESULT_FILE}")
    result = read_record(path)
    if result is None:
        raise ConfigError(f"{path} holds no readable {RESULT_FILE}; pass a run folder made by `python -m harness.run`")
    eff = result.get("config")
    if not eff or "model" not in eff:
        raise ConfigError(f"{path}/{RESULT_FILE} holds no effective config; re-run it with this harness version")
    hydra_file = path / HYDRA_CONFIG
    composed = OmegaConf.load(hydra_file) if hydra_file.exists() else OmegaConf.create(eff)
    run = RunFolder(path, result, eff, composed, cache_dir(OmegaConf.select(composed, "paths.cache", default=None)))
    if finished:
        if result.get("status") != "ok" or not result.get("saved_to"):
            raise ConfigError(f"run {path.name} has status {result.get('status')!r} and saved nothing; "
                              f"pass a finished run (status ok)")
        if not run.saved.is_dir():
            raise ConfigError(f"run {path.name} says it saved {result['saved_to']}/ but that folder is missing")
    return run
