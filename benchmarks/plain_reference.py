"""The plain reference: transformers `Trainer` + peft as a user writes it from the peft quick-tour, no tuning.

    python -m benchmarks.plain_reference --method lora --steps 20 --out /tmp/ref.json

Defaults a user keeps: float32 weights (`from_pretrained` without a dtype), dynamic padding
(`DataCollatorForSeq2Seq(padding=True)`), random batches, `adamw_torch`, eager/SDPA attention as transformers
picks it. QLoRA follows the peft/bitsandbytes docs (NF4, double quantisation, bf16 compute dtype,
`prepare_model_for_kbit_training`). The work is the harness's: same bundled model, the same tokenised examples
(taken from the harness's task, so the token ids match), batch size, steps, learning rate, rank, alpha and
target modules. Only timing callbacks are added; they are the same ones that time the harness.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")

import torch  # noqa: E402
from peft import IA3Config, LoraConfig, get_peft_model, prepare_model_for_kbit_training  # noqa: E402
from transformers import (  # noqa: E402
    AutoModelForCausalLM,
    BitsAndBytesConfig,
    DataCollatorForSeq2Seq,
    Trainer,
    TrainingArguments,
)

from benchmarks.common import StepTimer, write_json  # noqa: E402

METHODS = ("full", "lora", "qlora", "dora", "ia3")
LR = {"full": 5e-5, "lora": 2e-4, "qlora": 2e-4, "dora": 2e-4, "ia3": 3e-3}  # the harness's method defaults


def harness_examples(n_train: int, max_len: int, model_name: str):
    """The harness's tokenised training examples (prompt + answer, loss on the answer) and the model folder."""
    from hydra import compose, initialize_config_dir

    from harness.assets import bundled_model_dir, cache_dir
    from harness.assets import CONF_DIR
    from harness.models import load_tokenizer
    from harness.tasks import get_task

    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        cfg = compose(config_name="config", overrides=[f"model={model_name}", f"task.n_train={n_train}", "tracking=none"])
    cache = cache_dir(cfg.paths.cache)
    folder = bundled_model_dir(cfg.model, cache) if cfg.model.source == "bundled" else None
    tokenizer = load_tokenizer(cfg.model, cache)  # AutoTokenizer from the model folder (pad token = eos if unset)
    task = get_task(cfg.task, cache)
    features = task.train_dataset(task.splits()["train"], tokenizer, "causal_lm", max_len)
    return folder, tokenizer, features.select_columns(["input_ids", "attention_mask", "labels"])


def build_model(method: str, folder, r: int, targets: list[str]):
    """The model as the peft docs build it for `method`."""
    if method == "qlora":
        bnb = BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True,
                                 bnb_4bit_compute_dtype=torch.bfloat16)
        model = AutoModelForCausalLM.from_pretrained(folder, quantization_config=bnb)
        model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=False)
    else:
        model = AutoModelForCausalLM.from_pretrained(folder)
    if method == "full":
        return model
    if method == "ia3":
        # the harness's ia3 treats targets inside the MLP as feed-forward; q/v are not
        config = IA3Config(task_type="CAUSAL_LM", target_modules=targets,
                           feedforward_modules=[t for t in targets if t in ("gate_proj", "up_proj", "down_proj")])
    else:
        config = LoraConfig(task_type="CAUSAL_LM", r=r, lora_alpha=2 * r, lora_dropout=0.05, target_modules=targets,
                            use_dora=method == "dora")
    return get_peft_model(model, config)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--method", choices=METHODS, default="lora")
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--max-len", type=int, default=256)
    parser.add_argument("--n-train", type=int, default=1200)
    parser.add_argument("--r", type=int, default=16)
    parser.add_argument("--targets", default="q_proj,v_proj")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", required=True)
    args = parser.parse_args()

    from harness.measure import PeakMemory  # the harness's own peak-memory reading, so both sides read alike

    t0 = time.perf_counter()
    folder, tokenizer, features = harness_examples(args.n_train, args.max_len, args.model)
    torch.manual_seed(args.seed)
    model = build_model(args.method, folder, args.r, args.targets.split(","))
    setup_s = time.perf_counter() - t0
    timer, peak = StepTimer(), PeakMemory()
    with tempfile.TemporaryDirectory() as out_dir:
        training_args = TrainingArguments(
            output_dir=out_dir, per_device_train_batch_size=args.batch_size, learning_rate=LR[args.method],
            max_steps=args.steps, logging_steps=10, save_strategy="no", report_to="none", seed=args.seed,
            include_num_input_tokens_seen="non_padding",  # measurement only: Trainer counts real tokens
        )
        trainer = Trainer(model=model, args=training_args, train_dataset=features,
                          data_collator=DataCollatorForSeq2Seq(tokenizer, padding=True), callbacks=[timer, peak])
        output = trainer.train()
    runtime = float(output.metrics["train_runtime"])
    tokens = int(trainer.state.num_input_tokens_seen)
    write_json(args.out, {
        "method": args.method, "steps": args.steps, "batch_size": args.batch_size, "setup_s": setup_s,
        "train_runtime_s": runtime, "train_tokens": tokens, "train_tokens_per_s": tokens / runtime,
        "train_loss": float(output.metrics["train_loss"]), **peak.result(), **timer.summary(),
        "params_trainable": sum(p.numel() for p in model.parameters() if p.requires_grad),  # no 4-bit weight trains
        "dtype": str(next(model.parameters()).dtype),
    })


if __name__ == "__main__":
    main()
