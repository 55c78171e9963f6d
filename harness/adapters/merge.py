"""Adapters after training: merge one into its base, or combine several into one multi-task adapter and score it.

    python -m harness.adapters.merge RUN_DIR --out merged/          # merge_and_unload -> a plain model folder
    python -m harness.adapters.merge RUN_A RUN_B RUN_C --combine ties,dare_ties,linear --eval  # [--union RUN_U]
    python -m harness.adapters.merge RUN_A RUN_B RUN_C --combine ties,dare_ties,linear --select --union RUN_U

`--select` (harness/adapters/merge_select.py) chooses each combine type's weight and density on the tasks'
validation rows from a grid, then scores base, own adapters, union and the chosen merges on test: the study's
protocol. `--eval` scores fixed `--weights` / `--density` on test (no choice is made).

Merging is peft's `merge_and_unload`; `merge.json` records the base it went into. A QLoRA adapter merges into the
4-bit weights it trained against, de-quantised (not the original float weights, which it never saw). Combining
is peft's `add_weighted_adapter`; `--eval` scores the base, each run's own adapter, each combined adapter (and
`--union`, one run trained on all the tasks) on every run's task into `merge_table.json` / `.md`, with retention
= combined (or union) score / own-adapter score.

The names mean what the papers mean: `linear`, `ties`, `dare_ties`, `dare_linear` and `magnitude_prune` combine
the task vectors, i.e. each adapter's full update B@A (linear exactly, by concatenating the factors: peft's `cat`;
the others through peft's `*_svd` forms, which re-factor the result by SVD). peft's own `linear`, `ties`,
`dare_*` and `magnitude_prune` combine the A and B factors separately, so their product carries cross terms
between adapters and sign election acts on factors, not on the update; they stay available as
`<name>_factors` and are labelled as such in the table.
"""

from __future__ import annotations

import argparse
import shutil
import sys
import time
from pathlib import Path
from typing import Any

import torch

from harness.exits import error
from harness.errors import ConfigError, HarnessError
from harness.results import now, write_json_atomic
from harness.runfolder import RunFolder, open_run

from harness.adapters.combine import (COMBINE_FORMS, COMBINE_TYPES, FACTORS, MERGE_FILE, NEEDS_DENSITY,  # noqa: F401
                                      SAME_RANK_TYPES, TABLE_JSON, TABLE_MD, TASK_VECTORS, check_combinable,
                                      combine_runs, markdown_table, score_all, summarise,
                                      union_model)



def probe_inputs(run: RunFolder, tokenizer, n: int = 4) -> dict[str, torch.Tensor]:
    """A few of the run's own test inputs, left-padded: what merged and unmerged logits are compared on."""
    from harness.tasks import get_task
    from harness.tasks.generation import left_padded

    task = get_task(run.task_cfg, run.cache)
    rows = task.read_split("test")[:n]
    if run.model_cfg.kind == "encoder":
        return dict(tokenizer([task.encoder_text(r) for r in rows], padding=True, return_tensors="pt"))
    return left_padded([task.prompt_ids(tokenizer, r)[-128:] for r in rows], tokenizer.pad_token_id)


@torch.inference_mode()
def logits(model, inputs: dict[str, torch.Tensor]) -> torch.Tensor:
    model.eval()
    out = model(**inputs).logits.float()
    mask = inputs["attention_mask"]
    return out[mask.bool()] if out.dim() == 3 else out  # padded positions are not compared


def agreement(reference: torch.Tensor, other: torch.Tensor) -> dict[str, float]:
    """How closely two sets of logits (positions x vocabulary, or rows x labels) agree."""
    return {"max_abs_logit_diff": (reference - other).abs().max().item(), "max_abs_logit": reference.abs().max().item(),
            "argmax_agreement": (reference.argmax(-1) == other.argmax(-1)).float().mean().item(),
            "positions": int(reference.shape[0])}


SAVE_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def merge_run(run: RunFolder, out: Path, dtype: str = "float32") -> dict[str, Any]:
    """merge_and_unload in float32 into a plain model folder (+ tokenizer, merge.json), saved in `dtype`.

    The merge is done in float32 because a bf16 weight cannot hold an update smaller than its rounding step, which
    a short run's update mostly is. `check` compares the saved model with the
    unmerged adapter at the saved precision: against the float32 base for a float32 save; for a bf16 / fp16 save,
    against the adapter as trained (on the base in its training dtype), so merge.json says what the lower-precision
    save loses (argmax agreement, max logit difference)."""
    from peft import PeftConfig, PeftModel

    from harness.methods import load_trained

    run.require_adapter("merging")
    if dtype not in SAVE_DTYPES:
        raise ConfigError(f"--dtype {dtype!r}: choose one of {', '.join(SAVE_DTYPES)} (float32 keeps every update)")
    if PeftConfig.from_pretrained(str(run.saved)).is_prompt_learning:
        raise ConfigError(f"run {run.name} ({run.result['method']}) learned virtual tokens, not weight updates; "
                          f"there is nothing to merge into the base (serve it with its adapter)")
    t0 = time.perf_counter()
    base, tokenizer, record = run.load_base(dequantize=True)
    inputs = probe_inputs(run, tokenizer)
    as_trained = logits(load_trained(run.load_base()[0], run.saved), inputs)  # what the run itself evaluated
    peft_model = PeftModel.from_pretrained(base.float(), str(run.saved))
    unmerged32 = logits(peft_model, inputs)
    merged = peft_model.merge_and_unload()
    at_float32 = agreement(unmerged32, logits(merged, inputs))
    if dtype != "float32":
        merged = merged.to(SAVE_DTYPES[dtype])
    tmp = out.with_name(out.name + ".partial")
    shutil.rmtree(tmp, ignore_errors=True)
    merged.save_pretrained(tmp)
    tokenizer.save_pretrained(tmp)
    # checked as saved: the folder reloaded the way a user loads it (CPU bf16 kernels can round a reloaded
    # model's matmuls differently from the in-memory copy's)
    saved_logits = logits(type(merged).from_pretrained(tmp), inputs)
    info = {
        "run": run.name, "run_dir": str(run.path), "method": run.result["method"], "task": run.result["task"],
        "merged_into": record, "merged_in": "float32", "saved_dtype": dtype,
        "check": agreement(unmerged32 if dtype == "float32" else as_trained, saved_logits),
        "check_float32_merge": at_float32,
        "check_vs_adapter_as_trained": agreement(as_trained, saved_logits),
        "merge_s": round(time.perf_counter() - t0, 3), "created_at": now(),
    }
    if dtype != "float32":
        info["note"] = (f"saved in {dtype}: updates smaller than a weight's rounding step are lost; argmax agrees with "
                        f"the unmerged adapter at {100 * info['check']['argmax_agreement']:.1f}% of positions "
                        f"(float32 keeps them: --dtype float32)")
    if run.quantization:  # the adapter on the 4-bit base it trained on, against the merged de-quantised model
        info["check"]["max_abs_logit_diff_vs_quantized"] = info["check_vs_adapter_as_trained"]["max_abs_logit_diff"]
    write_json_atomic(tmp / MERGE_FILE, info)
    shutil.rmtree(out, ignore_errors=True)
    tmp.rename(out)  # a half-written folder never looks like a merged model
    return info


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m harness.adapters.merge", description=__doc__.split("\n\n")[0])
    parser.add_argument("runs", nargs="+", type=Path, help="run folders (paths.runs/<run_id>)")
    parser.add_argument("--out", type=Path, help="output folder (default: RUN/merged, or <runs>/combined_<tasks>)")
    parser.add_argument("--combine", help=f"comma-separated peft combination types: {', '.join(COMBINE_TYPES)}")
    parser.add_argument("--density", type=float, help="fraction kept by ties / dare / magnitude_prune (default 0.5)")
    parser.add_argument("--weights", help="comma-separated weight per run (default 1.0 each)")
    parser.add_argument("--eval", action="store_true", help="score base, own, combined (and --union) on every task")
    parser.add_argument("--n-eval", type=int, help="score only the first N test rows of each task (default: all)")
    parser.add_argument("--union", type=Path, help="a run trained on all the tasks (e.g. task=multitask), scored too")
    parser.add_argument("--select", action="store_true", help="choose weight and density per combine type on "
                        "validation from --grid-weights x --grid-density, then score on test (merge_select.py)")
    parser.add_argument("--grid-weights", default="0.5,1.0,1.5", help="--select: weights tried (one for every adapter)")
    parser.add_argument("--grid-density", default="0.2,0.5,0.8", help="--select: densities tried (ties, dare, ...)")
    parser.add_argument("--n-val", type=int, help="--select: validation rows per task (default: the run's n_eval)")
    parser.add_argument("--n-test", type=int, help="--select: test rows per task (default: the run's n_eval)")
    parser.add_argument("--dtype", default="float32", help="precision the merged model is saved in (float32, "
                        "bfloat16, float16; default float32, which keeps every update; merge.json says what less loses)")
    args = parser.parse_args(sys.argv[1:] if argv is None else argv)
    try:
        runs = [open_run(p, finished=True) for p in args.runs]
        if not args.combine:
            if len(runs) > 1:
                raise ConfigError("several runs need --combine (e.g. --combine ties); one run merges into its base")
            out = args.out or runs[0].path / "merged"
            info = merge_run(runs[0], out, args.dtype)
            print(f"merged {info['run']} into {info['merged_into']['base']} -> {out} "
                  f"(max |logit diff| vs adapter {info['check']['max_abs_logit_diff']:.2e})")
            return 0
        combine = [c.strip() for c in args.combine.split(",") if c.strip()]
        bad = [c for c in combine if c not in COMBINE_TYPES]
        if bad or not combine:
            raise ConfigError(f"--combine {args.combine!r}: unknown {', '.join(bad) or 'empty'}; choose from {', '.join(COMBINE_TYPES)}")
        if args.select:
            return _select(args, runs, combine)
        args.density = 0.5 if args.density is None else args.density
        if not 0 < args.density <= 1:
            raise ConfigError(f"--density must be in (0, 1], got {args.density}")
        if args.n_eval is not None and args.n_eval <= 0:
            raise ConfigError(f"--n-eval must be a positive integer, got {args.n_eval}")
        try:
            weights = [float(w) for w in args.weights.split(",")] if args.weights else None
        except ValueError:
            raise ConfigError(f"--weights must be comma-separated numbers, got {args.weights!r}") from None
        union = open_run(args.union, finished=True) if args.union else None
        out = args.out or runs[0].path.parent / ("combined_" + "_".join(r.result["task"] for r in runs))
        table = combine_runs(runs, combine, args.density, weights, args.eval, out, args.n_eval, union)
        print((out / TABLE_MD).read_text() if table["rows"] else f"combined adapters saved to {out / 'adapters'}")
        return 0
    except HarnessError as err:
        return error(err)


def _numbers(text: str, flag: str) -> list[float]:
    try:
        return [float(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise ConfigError(f"{flag} must be comma-separated numbers, got {text!r}") from None


def _select(args: argparse.Namespace, runs: list[RunFolder], combine: list[str]) -> int:
    from harness.adapters.merge_select import select_and_score

    if args.weights or args.density is not None or args.eval or args.n_eval:
        raise ConfigError("--select chooses weight and density on validation and scores test itself; drop --weights, "
                          "--density, --eval and --n-eval (use --grid-weights, --grid-density, --n-val, --n-test)")
    for flag, value in (("--n-val", args.n_val), ("--n-test", args.n_test)):
        if value is not None and value <= 0:
            raise ConfigError(f"{flag} must be a positive integer, got {value}")
    union = open_run(args.union, finished=True) if args.union else None
    out = args.out or runs[0].path.parent / ("selected_" + "_".join(r.result["task"] for r in runs))
    select_and_score(runs, combine, _numbers(args.grid_weights, "--grid-weights"),
                     _numbers(args.grid_density, "--grid-density"), out, args.n_val, args.n_test, union)
    print((out / TABLE_MD).read_text())
    return 0


if __name__ == "__main__":
    sys.exit(main())
