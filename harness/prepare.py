"""The set-up command (`make setup` runs it): everything the runs read from the cache, made once.

    python -m harness.prepare      # convert SmolLM2's GGUF to a safetensors folder, prepare every task's splits
"""

from __future__ import annotations

from omegaconf import OmegaConf

from harness.assets import CONF_MODEL_DIR, bundled_model_dir, cache_dir
from harness.exits import exit_on_error
from harness.tasks import prepare_all_tasks

CONVERTED_MODELS = ("smollm2-135m",)  # bundled as GGUF: de-quantised once into the cache


def prepare_all() -> None:
    cache = cache_dir()
    for name in CONVERTED_MODELS:
        model_cfg = OmegaConf.load(CONF_MODEL_DIR / f"{name}.yaml")
        print(f"model {name}: {bundled_model_dir(model_cfg, cache)}")
    prepare_all_tasks(cache)


if __name__ == "__main__":
    with exit_on_error():
        prepare_all()
