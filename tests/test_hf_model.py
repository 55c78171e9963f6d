"""`model=hf model.path=...`: any model by local folder or hub id, without a preset. Its kind comes from its
config.json, the estimator needs nothing else, a run records the folder and the hub id, and a bad path or an id the
offline hub cannot give is one line before any work."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf

from conftest import TINY, compose, run_cli, run_inprocess
from harness.assets import cache_dir
from harness.config import effective_config, validate
from harness.errors import ConfigError
from harness.estimate.model import estimate_overrides
from harness.hf_model import display_name, hub_id, kind_of, model_kind

BUNDLED_FOLDER = cache_dir() / "models" / "smollm2-135m"  # the converted bundled model, as a user's local folder
TINY_LLAMA = {"hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2, "num_attention_heads": 4,
              "num_key_value_heads": 2, "max_position_embeddings": 512, "tie_word_embeddings": True}
TINY_BERT = {"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 1, "num_attention_heads": 2}


def save_tiny(folder: Path, model_type: str, head: str | None, **arch) -> Path:
    """A tiny random model's save_pretrained (config.json and weights) with `head` as its class (None: only
    config.json, without `architectures`)."""
    import transformers
    from transformers import AutoConfig

    config = AutoConfig.for_model(model_type, vocab_size=320, **arch)
    if head is None:
        config.save_pretrained(folder)
        return folder
    torch.manual_seed(0)
    getattr(transformers, head)(config).save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def tiny_llama_folder(tmp_path_factory) -> Path:
    """A user's causal LM folder: a tiny random Llama with SmolLM2's tokenizer, named after a hub repository."""
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    folder = tmp_path_factory.mktemp("models") / "my tiny llama"
    tokenizer = AutoTokenizer.from_pretrained(BUNDLED_FOLDER)
    config = AutoConfig.for_model("llama", vocab_size=len(tokenizer), pad_token_id=tokenizer.eos_token_id, **TINY_LLAMA)
    torch.manual_seed(0)
    AutoModelForCausalLM.from_config(config).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    written = json.loads((folder / "config.json").read_text())
    (folder / "config.json").write_text(json.dumps({**written, "_name_or_path": "someone/tiny-llama"}))
    return folder


# ---- kind, hub id and name from config.json ----

@pytest.mark.parametrize(("model_type", "head", "arch", "kind"), [
    ("llama", "LlamaForCausalLM", TINY_LLAMA, "causal_lm"),
    ("gpt2", "GPT2LMHeadModel", {"n_embd": 32, "n_layer": 1, "n_head": 2}, "causal_lm"),
    ("bert", "BertModel", TINY_BERT, "encoder"),                      # a bare backbone: told by its model type
    ("bert", "BertForSequenceClassification", TINY_BERT, "encoder"),
    ("roberta", "RobertaForMaskedLM", TINY_BERT, "encoder"),
    ("llama", None, TINY_LLAMA, "causal_lm"),                         # no architectures at all
])
def test_kind_is_read_from_config_json(tmp_path: Path, model_type: str, head: str | None, arch: dict, kind: str) -> None:
    folder = save_tiny(tmp_path / "m", model_type, head, **arch)
    assert model_kind(str(folder)) == kind


def test_an_encoder_decoder_or_unknown_type_is_one_line() -> None:
    from transformers import AutoConfig

    with pytest.raises(ConfigError, match="encoder-decoder"):
        kind_of(AutoConfig.for_model("t5"))
    unknown = AutoConfig.for_model("llama")
    unknown.model_type, unknown.architectures = "nobody-knows", ["SomethingElse"]
    with pytest.raises(ConfigError, match="set model.kind=causal_lm or model.kind=encoder"):
        kind_of(unknown)


def test_hub_id_and_name_of_folders_and_ids(tiny_llama_folder: Path) -> None:
    assert hub_id(str(tiny_llama_folder)) == "someone/tiny-llama"  # its config's _name_or_path
    assert hub_id(str(BUNDLED_FOLDER)) is None                      # the GGUF conversion names no hub id
    assert hub_id("Qwen/Qwen2.5-0.5B") == "Qwen/Qwen2.5-0.5B"
    assert display_name(str(tiny_llama_folder)) == "hf-my-tiny-llama" and display_name("Qwen/Qwen2.5-0.5B") == "hf-Qwen2.5-0.5B"


def test_composed_config_resolves_kind_and_identity(tmp_path: Path) -> None:
    folder = save_tiny(tmp_path / "enc", "bert", "BertModel", **TINY_BERT)
    eff = effective_config(compose(["model=hf", f"model.path={folder}"]))
    assert eff["model"] | {"path": None} == {"name": "hf-enc", "kind": "encoder", "source": "hf", "path": None,
                                             "hub_id": None}
    given = compose(["model=hf", f"model.path={folder}", "model.kind=causal_lm"])  # an explicit kind wins
    assert given.model.kind == "causal_lm"


# ---- the estimator, from config.json alone ----

def test_estimator_works_from_config_json_alone(tmp_path: Path) -> None:
    from transformers import AutoConfig

    preset = OmegaConf.load(Path(__file__).resolve().parent.parent / "conf" / "model" / "qwen2.5-0.5b.yaml")
    folder = tmp_path / "qwen-config-only"
    AutoConfig.for_model(**OmegaConf.to_container(preset.hf_config)).save_pretrained(folder)  # no weights
    assert [p.name for p in folder.iterdir()] == ["config.json"]
    mine = estimate_overrides(["model=hf", f"model.path={folder}", "method=lora", "r=8"])
    theirs = estimate_overrides(["model=qwen2.5-0.5b", "method=lora", "r=8"])
    assert (mine.params_total, mine.params_trainable) == (theirs.params_total, theirs.params_trainable)
    assert mine.memory.as_dict() == theirs.memory.as_dict()


# ---- bad paths and ids: one line before any work ----

@pytest.mark.parametrize(("path", "message"), [
    (None, "model=hf needs model.path"),
    ("/no/such/folder", "model.path=/no/such/folder does not exist"),
    ("nobody/no-such-model", "is no local folder, and as a hub id it cannot be fetched: the hub is disabled"),
])
def test_missing_folder_or_unavailable_id_is_one_line(path, message) -> None:
    cfg = compose(["model=hf"] + ([f"model.path={path}"] if path else []))
    with pytest.raises(ConfigError, match=message) as err:
        validate(cfg)
    assert "\n" not in str(err.value)


def test_an_unreachable_hub_is_one_line_within_seconds(monkeypatch) -> None:
    import time

    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setenv("HF_ENDPOINT", "http://127.0.0.1:9")  # nothing listens there
    start = time.perf_counter()
    with pytest.raises(ConfigError, match="127.0.0.1 is unreachable"):
        validate(compose(["model=hf", "model.path=nobody/no-such-model"]))
    assert time.perf_counter() - start < 10


def test_folder_without_weights_or_tokenizer_is_one_line(tmp_path: Path, tiny_llama_folder: Path) -> None:
    folder = save_tiny(tmp_path / "config-only", "llama", None, **TINY_LLAMA)
    with pytest.raises(ConfigError, match="holds no weights"):
        validate(compose(["model=hf", f"model.path={folder}"]))
    no_tokenizer = tmp_path / "no-tokenizer"
    shutil.copytree(tiny_llama_folder, no_tokenizer, ignore=shutil.ignore_patterns("tokenizer*", "chat_template*"))
    with pytest.raises(ConfigError, match="holds no tokenizer"):
        validate(compose(["model=hf", f"model.path={no_tokenizer}"]))


def test_cli_rejects_a_missing_folder_in_one_line(tmp_path: Path) -> None:
    runs = tmp_path / "runs"
    proc = run_cli(["model=hf", f"model.path={tmp_path / 'gone'}", "tracking=none", f"paths.runs={runs}"], timeout=300)
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert proc.returncode == 2 and len(lines) == 1 and "does not exist" in lines[0], proc.stderr[-2000:]
    assert not runs.exists()


# ---- runs ----

def test_tiny_run_from_a_local_folder_records_path_and_hub_id(tiny_llama_folder: Path, runs: Path) -> None:
    result, run_dir = run_inprocess(["model=hf", f"model.path={tiny_llama_folder}", "method=lora", *TINY], runs)
    assert result["status"] in ("ok", "collapsed") and result["model"] == "hf-my-tiny-llama"
    assert result["base_model"] == {"hub_id": "someone/tiny-llama", "local_path": str(tiny_llama_folder),
                                    "source": "hf"}
    assert result["config"]["model"]["kind"] == "causal_lm"
    adapter = json.loads((run_dir / "adapter" / "adapter_config.json").read_text())
    assert adapter["base_model_name_or_path"] == "someone/tiny-llama"


@pytest.mark.slow
def test_bundled_model_folder_as_a_local_model(runs: Path) -> None:
    """The converted SmolLM2-135M folder, given as a user's own folder: loads, trains 3 LoRA steps (the first, at warmup rate 0, moves nothing), records."""
    result, _ = run_inprocess(["model=hf", f"model.path={BUNDLED_FOLDER}", "method=lora", "task=classify",
                               "train.max_steps=3", "train.batch_size=4", "task.n_train=12", "task.n_eval=8",
                               "tracking=none", "train.logging_steps=1"], runs)
    assert result["status"] in ("ok", "collapsed") and result["model"] == "hf-smollm2-135m"
    assert result["base_model"] == {"hub_id": None, "local_path": str(BUNDLED_FOLDER.resolve()), "source": "hf"}
    assert result["params_total"] > 100_000_000 and result["label_set"] == ["negative", "neutral", "positive"]
