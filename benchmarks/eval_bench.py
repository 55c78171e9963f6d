"""Evaluation throughput: the harness's scorer against a plain `model.generate` loop over the same prompts.

    python -m benchmarks.eval_bench                         # smollm2-135m, extract and classify test prompts
    python -m benchmarks.eval_bench --tasks style --n 32 --out eval.json
    python -m benchmarks.eval_bench --model minilm-l6 --tasks classify --n 600   # an encoder: length batching

Both sides answer the same prompts greedily with the same `max_new_tokens`, on the same model in the same
precision (bf16, as an adapter run scores): the harness through `Task.predict` (batches of `--batch-size` grouped
by prompt length, each sequence stopping at EOS, KV cache; harness/tasks/generation.py), the plain side one prompt at a
time, the loop a first script would write; and, to show what running the prompts' shared beginning once saves,
the harness scorer with `share_prefix=False`. Reported per task: examples/s and generated tokens/s (up to and
including each answer's EOS) for both, and the ratio harness / plain. `benchmarks.bench` runs this between
matmul-limit readings. For an encoder (`--model minilm-l6`) it times arg-max scoring in batches of similar length
(the harness) against batches in file order, in fp32.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

import torch


def scoring_setup(model_name: str, task_name: str, n: int, precision: str):
    from hydra import compose, initialize_config_dir

    from harness.assets import cache_dir
    from harness.assets import CONF_DIR
    from harness.models import load_model, load_tokenizer
    from harness.tasks import get_task

    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        cfg = compose(config_name="config", overrides=[f"model={model_name}", f"task={task_name}", f"task.n_eval={n}"])
    cache = cache_dir()
    tokenizer = load_tokenizer(cfg.model, cache)
    task = get_task(cfg.task, cache)
    labels = list(task.labels) if cfg.model.kind == "encoder" else None  # an encoder gets a head over them
    model = load_model(cfg.model, cache, precision=precision, tokenizer=tokenizer, labels=labels)
    return model, tokenizer, task, task.splits()["test"]


def _generated_tokens(tokenizer, texts: list[str]) -> int:
    return sum(len(tokenizer(t, add_special_tokens=False)["input_ids"]) + 1 for t in texts)  # + the EOS or last


@torch.no_grad()
def plain_loop(model, tokenizer, task, rows: list[dict[str, Any]]) -> list[str]:
    """One prompt at a time through model.generate: no padding, no batching."""
    out = []
    for row in rows:
        ids = torch.tensor([task.prompt_ids(tokenizer, row)])
        generated = model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), do_sample=False,
                                   max_new_tokens=task.cfg.max_new_tokens, pad_token_id=tokenizer.pad_token_id,
                                   eos_token_id=tokenizer.eos_token_id)
        out.append(tokenizer.decode(generated[0, ids.shape[1]:], skip_special_tokens=True).strip())
    return out


def measure(model_name: str, task_name: str, n: int, batch_size: int, precision: str = "bf16") -> dict[str, Any]:
    model, tokenizer, task, test = scoring_setup(model_name, task_name, n, precision)
    model.eval()
    rows = list(test)
    task.predict(model, tokenizer, test.select(range(min(4, len(rows)))), "causal_lm", batch_size, 256)  # warm-up
    t0 = time.perf_counter()
    harness_out = task.predict(model, tokenizer, test, "causal_lm", batch_size, 256)
    harness_s = time.perf_counter() - t0
    t0 = time.perf_counter()  # the same scorer without the shared prefix: what running it once saves
    unshared_out = task.predict(model, tokenizer, test, "causal_lm", batch_size, 256, share_prefix=False)
    unshared_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    plain_out = plain_loop(model, tokenizer, task, rows)
    plain_s = time.perf_counter() - t0
    h_tokens, p_tokens = _generated_tokens(tokenizer, harness_out), _generated_tokens(tokenizer, plain_out)
    return {
        "task": task_name, "model": model_name, "precision": precision, "examples": len(rows),
        "batch_size": batch_size, "max_new_tokens": task.cfg.max_new_tokens,
        "harness_s": round(harness_s, 3), "plain_s": round(plain_s, 3),
        "harness_examples_per_s": len(rows) / harness_s, "plain_examples_per_s": len(rows) / plain_s,
        "harness_generated_tokens_per_s": h_tokens / harness_s, "plain_generated_tokens_per_s": p_tokens / plain_s,
        "speedup": plain_s / harness_s,
        "same_answers": sum(a == b for a, b in zip(harness_out, plain_out)),
        "unshared_s": round(unshared_s, 3), "prefix_speedup": unshared_s / harness_s,
        "same_answers_unshared": sum(a == b for a, b in zip(harness_out, unshared_out)),
    }


def measure_encoder(model_name: str, task_name: str, n: int, batch_size: int, precision: str = "fp32"
                    ) -> dict[str, Any]:
    """An encoder's arg-max scoring: batches of similar length (the harness) against batches in file order."""
    model, tokenizer, task, test = scoring_setup(model_name, task_name, n, precision)
    task.predict(model, tokenizer, test.select(range(min(4, len(test)))), "encoder", batch_size, 256)  # warm-up
    seconds, outputs = {}, {}
    for name, by_length in (("harness", True), ("file_order", False)):
        t0 = time.perf_counter()
        outputs[name] = task.predict(model, tokenizer, test, "encoder", batch_size, 256, by_length=by_length)
        seconds[name] = time.perf_counter() - t0
    return {"task": task_name, "model": model_name, "precision": precision, "examples": len(test),
            "batch_size": batch_size, "harness_s": round(seconds["harness"], 3),
            "file_order_s": round(seconds["file_order"], 3), "speedup": seconds["file_order"] / seconds["harness"],
            "same_answers": sum(a == b for a, b in zip(outputs["harness"], outputs["file_order"]))}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--tasks", default="extract,classify")
    parser.add_argument("--n", type=int, default=48, help="test prompts per task")
    parser.add_argument("--batch-size", type=int, default=32, help="the harness side's batch (train.eval_batch_size)")
    parser.add_argument("--out", type=Path, default=None, help="write the rows as JSON here")
    args = parser.parse_args(argv)
    from omegaconf import OmegaConf

    from harness.assets import CONF_DIR

    encoder = OmegaConf.load(CONF_DIR / "model" / f"{args.model}.yaml").get("kind") == "encoder"
    rows = [(measure_encoder if encoder else measure)(args.model, t, args.n, args.batch_size)
            for t in args.tasks.split(",")]
    text = json.dumps(rows, indent=2)
    if args.out:
        args.out.write_text(text)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
