"""`model=hf`: any Hugging Face model by local folder or hub id, without a preset in conf/model/.

    python -m harness.run model=hf model.path=/data/my-llama
    python -m harness.run model=hf model.path=Qwen/Qwen2.5-0.5B     (the hub, or a local HF cache that holds it)

conf/model/hf.yaml fills a preset's keys from the model's own config.json through the resolvers registered here:
`kind` (causal_lm or encoder, from `architectures`, else `model_type`), `hub_id` (the id itself; for a local folder
its config's `_name_or_path` when that is a hub id, else null) and `name` (`hf-` and the folder's or repository's
last part: run ids and tables tell two models apart). Any of them can be overridden (model.kind=encoder,
model.name=mine). `check_model` turns a missing folder, a folder without config.json, weights or tokenizer, or an id
the hub cannot give into one line before any work; `validate` and the estimator call it before anything resolves.
Only transformers' config is read here (lazily imported), so checking a command line stays light.
"""

from __future__ import annotations

import functools
import re
from pathlib import Path
from typing import Any

from omegaconf import OmegaConf

from harness.errors import ConfigError

HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*(/[\w.-]+)?$")  # `name` or `org/name`, as the hub spells ids
WEIGHT_PATTERNS = ("*.safetensors", "*.bin")
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "tokenizer.model", "vocab.txt", "vocab.json")
CAUSAL_HEADS = ("ForCausalLM", "LMHeadModel")
ENCODER_HEADS = ("ForSequenceClassification", "ForMaskedLM", "ForTokenClassification", "ForPreTraining",
                 "ForQuestionAnswering", "ForMultipleChoice")
EXAMPLE = "a local folder with config.json, weights and tokenizer, or a hub id such as Qwen/Qwen2.5-0.5B"


def location(path: str | None) -> tuple[str, bool]:
    """(what from_pretrained gets, whether it is a local folder): an existing path as an absolute folder, else the
    hub id. A path that exists nowhere and is not shaped like a hub id is a ConfigError."""
    if not path:
        raise ConfigError(f"model=hf needs model.path: {EXAMPLE}, e.g. model=hf model.path=/data/my-llama")
    local = Path(str(path)).expanduser()
    if local.exists():
        return str(local.resolve()), True
    if HUB_ID.match(str(path)) and not str(path).startswith("."):
        return str(path), False
    raise ConfigError(f"model.path={path} does not exist; give {EXAMPLE}")


def check_model(path: str | None, *, need_weights: bool = True, need_kind: bool = True) -> None:
    """One line before any work when the model cannot be used: the folder lacks what loading needs (weights and
    tokenizer only when `need_weights`: the estimator reads config.json alone), or the hub id is neither cached
    nor fetchable; then its kind must be readable (unless given: `need_kind` False)."""
    where, is_local = location(path)
    if is_local:
        folder = Path(where)
        if not folder.is_dir():
            raise ConfigError(f"model.path={path} is a file; give the folder that holds config.json")
        if not (folder / "config.json").is_file():
            raise ConfigError(f"model.path={path} has no config.json; give the folder save_pretrained wrote")
        if need_weights and not any(next(folder.glob(p), None) for p in WEIGHT_PATTERNS):
            raise ConfigError(f"model.path={path} holds no weights (*.safetensors or *.bin); give the folder "
                              "save_pretrained wrote")
        if need_weights and not any((folder / f).is_file() for f in TOKENIZER_FILES):
            raise ConfigError(f"model.path={path} holds no tokenizer ({', '.join(TOKENIZER_FILES)}); save the "
                              "tokenizer into it too (tokenizer.save_pretrained)")
    else:
        check_hub_id(where)
    if need_kind:
        model_kind(str(path))


def check_hub_id(model_id: str, timeout_s: float = 3.0) -> None:
    """A hub id is usable when a local HF cache holds its config.json or the hub answers within seconds."""
    from huggingface_hub import try_to_load_from_cache

    from harness import hub

    if isinstance(try_to_load_from_cache(model_id, "config.json"), str):
        return
    why = "the hub is disabled (HF_HUB_OFFLINE)" if hub.offline() else \
        f"{hub.host()} is unreachable" if not hub.reachable(timeout_s) else None
    if why:
        raise ConfigError(f"model.path={model_id} is no local folder, and as a hub id it cannot be fetched: {why} and "
                          "no local HF cache holds it; give a local folder, or set HF_HOME to a cache that has it")


def read_config(path: str) -> Any:
    """The model's transformers config (config.json alone), cached per folder and config.json's mtime."""
    where, is_local = location(path)
    stamp = (Path(where) / "config.json").stat().st_mtime_ns if is_local and (Path(where) / "config.json").exists() else 0
    return _read_config(where, stamp)


@functools.lru_cache(maxsize=16)
def _read_config(where: str, stamp: int) -> Any:
    from transformers import AutoConfig

    try:
        return AutoConfig.from_pretrained(where)
    except (OSError, ValueError, KeyError) as err:
        first = (str(err).splitlines() or [""])[0][:200]
        raise ConfigError(f"cannot read the config of model.path={where} ({type(err).__name__}: {first}); "
                          f"give {EXAMPLE}") from None


def kind_of(config: Any) -> str:
    """causal_lm or encoder: a causal-LM head class among `architectures` wins, then an encoder head class; a bare
    backbone (LlamaModel, BertModel) is told by its `model_type` (one with a masked-LM head is an encoder)."""
    from transformers.models.auto.modeling_auto import (MODEL_FOR_CAUSAL_LM_MAPPING_NAMES,
                                                        MODEL_FOR_MASKED_LM_MAPPING_NAMES,
                                                        MODEL_FOR_SEQUENCE_CLASSIFICATION_MAPPING_NAMES)

    architectures = list(getattr(config, "architectures", None) or [])
    model_type = getattr(config, "model_type", None)
    if getattr(config, "is_encoder_decoder", False):
        raise ConfigError(f"model type '{model_type}' is an encoder-decoder; the harness trains causal LMs and "
                          "encoders")
    if any(a.endswith(CAUSAL_HEADS) for a in architectures):
        return "causal_lm"
    if any(a.endswith(ENCODER_HEADS) for a in architectures):
        return "encoder"
    if model_type in MODEL_FOR_MASKED_LM_MAPPING_NAMES:  # BERT-likes also have a causal-LM head class
        return "encoder"
    if model_type in MODEL_FOR_CAUSAL_LM_MAPPING_NAMES:
        return "causal_lm"
    if model_type in MODEL_FOR_SEQUENCE_CLASSIFICATION_MAPPING_NAMES:
        return "encoder"
    raise ConfigError(f"cannot tell whether model type '{model_type}' (architectures {architectures or 'none'}) is a "
                      "causal LM or an encoder; set model.kind=causal_lm or model.kind=encoder")


def model_kind(path: str | None) -> str | None:
    """causal_lm or encoder; None while no path is given (`validate` then says model.path is missing)."""
    return kind_of(read_config(str(path))) if path else None


def hub_id(path: str | None) -> str | None:
    """The hub id a run names as its base: the id itself, or a local folder's `_name_or_path` when that is one."""
    if not path:
        return None
    where, is_local = location(path)
    if not is_local:
        return where
    import json

    try:
        named = json.loads((Path(where) / "config.json").read_text()).get("_name_or_path")
    except (OSError, ValueError):
        return None
    return named if isinstance(named, str) and HUB_ID.match(named) and not Path(named).exists() else None


def display_name(path: str | None) -> str:
    """`hf-<last part of the folder or id>`, in the characters a run id may hold; `hf` without a path."""
    if not path:
        return "hf"
    last = Path(str(path).rstrip("/")).name or str(path)
    return "hf-" + re.sub(r"[^A-Za-z0-9._-]+", "-", last)


for _name, _resolver in (("hf_kind", model_kind), ("hf_hub_id", hub_id), ("hf_name", display_name)):
    if not OmegaConf.has_resolver(_name):
        OmegaConf.register_new_resolver(_name, _resolver)
