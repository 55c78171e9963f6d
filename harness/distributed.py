"""Runs under `torchrun` / `accelerate launch`: which process this is, and what only one of them does.

    torchrun --nproc_per_node 2 -m harness.run model=tiny-llama dist=ddp        # 2 processes, one record
    accelerate launch --num_processes 4 -m harness.run method=full dist=fsdp
    make sweep TASK=style LAUNCHER=slurm_ddp ARGS="dist=ddp dist.gpus=4"      # a SLURM job of 4 tasks per run

The launcher sets RANK / WORLD_SIZE / LOCAL_RANK; Trainer (through accelerate) wraps the model in DDP, FSDP or
DeepSpeed from the `dist` config group (`training_kwargs`), so the harness writes no sharding of its own. What
the harness adds is the division of the run's own work: rank 0 alone scores the untuned and the tuned model,
saves, tracks and writes `result.json`; every rank trains, and its peak memory, tokens and a checksum of its
trained weights are gathered into rank 0's record (`dist_record`). The process group is started early through
accelerate's `PartialState` (gloo on CPU, nccl on CUDA), so ranks can wait for rank 0's scoring.

A rank that dies: torchrun's agent stops the others (SIGTERM, recorded as `interrupted`); a rank that fails
with an exception first leaves `rank<k>-failure.json` in the run folder, which rank 0's record then names.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from harness.errors import ConfigError

STRATEGIES = ("none", "ddp", "fsdp", "fsdp-offload", "zero2", "zero3")
SHARDED = ("fsdp", "fsdp-offload", "zero2", "zero3")


@dataclass(frozen=True)
class World:
    rank: int
    local_rank: int
    size: int

    @property
    def main(self) -> bool:
        return self.rank == 0


def world() -> World:
    """This process's place, from the launcher's environment (one process without a launcher). A SLURM job with
    several tasks (hydra/launcher=slurm_ddp: one task per GPU, started by srun through submitit) gets torch's
    variables from submitit's own TorchDistributedEnvironment (rank, world size, master address and port)."""
    env = os.environ
    if "RANK" not in env and env.get("SUBMITIT_EXECUTOR") == "slurm" and int(env.get("SLURM_NTASKS", 1)) > 1:
        from submitit.helpers import TorchDistributedEnvironment

        TorchDistributedEnvironment().export(set_cuda_visible_devices=False)
    return World(int(env.get("RANK", 0)), int(env.get("LOCAL_RANK", 0)), int(env.get("WORLD_SIZE", 1)))


def start() -> None:
    """Start the process group (accelerate's PartialState picks gloo or nccl); nothing for one process."""
    if world().size > 1:
        from accelerate import PartialState

        PartialState()


def wait_for_everyone() -> None:
    if world().size > 1:
        from accelerate import PartialState

        PartialState().wait_for_everyone()


def gather(obj: Any) -> list[Any]:
    """Every rank's `obj`, in rank order (a list of one without a process group)."""
    import torch.distributed as dist

    if world().size == 1 or not dist.is_initialized():
        return [obj]
    out: list[Any] = [None] * dist.get_world_size()
    dist.all_gather_object(out, obj)
    return out


def weights_checksum(model) -> float:
    """Sum of the trainable weights in float64: equal on every rank when data parallelism kept them in sync."""
    import torch

    with torch.no_grad():
        return float(sum(p.detach().double().sum() for p in model.parameters() if p.requires_grad))


def training_kwargs(dist_cfg: Any) -> dict[str, Any]:
    """TrainingArguments for the strategy: Trainer's own FSDP and DeepSpeed settings."""
    strategy = dist_cfg.strategy
    if strategy in ("none", "ddp"):
        return {"ddp_find_unused_parameters": False} if world().size > 1 else {}
    if strategy in ("fsdp", "fsdp-offload"):
        # FSDP2 (torch fully_shard), wrapping the model's own layer classes (its _no_split_modules); the
        # checkpoint a full state dict, so rank 0's saved model is the whole model
        return {"fsdp": True, "fsdp_config": {"version": 2, "reshard_after_forward": True,
                                              "cpu_offload": strategy == "fsdp-offload",
                                              "state_dict_type": "FULL_STATE_DICT"}}
    stage = 2 if strategy == "zero2" else 3
    return {"deepspeed": {"zero_optimization": {"stage": stage}, "bf16": {"enabled": "auto"},
                          "train_micro_batch_size_per_gpu": "auto", "gradient_accumulation_steps": "auto",
                          "gradient_clipping": "auto"}}


def check_device(eff: dict[str, Any]) -> None:
    """accelerate turns FSDP and DeepSpeed on only for accelerator devices (accelerate/state.py: its FSDP branch
    lists MULTI_GPU, MULTI_XPU, ..., not MULTI_CPU), so on a CPU Trainer would silently run DDP instead: refused."""
    import torch

    strategy = (eff.get("dist") or {}).get("strategy", "none")
    if strategy in SHARDED and not torch.cuda.is_available():
        raise ConfigError(f"dist={strategy} needs GPUs: on a CPU accelerate runs plain DDP instead of sharding; "
                          "use dist=ddp here")


def record_failure(run_dir: Path, reason: str) -> None:
    """A non-main rank's failure, for rank 0's record (rank 0 alone writes result.json)."""
    w = world()
    (Path(run_dir) / f"rank{w.rank}-failure.json").write_text(json.dumps({"rank": w.rank, "reason": reason}) + "\n")


def other_rank_failure(run_dir: Path) -> str | None:
    """What a failed rank left, as one line ("rank 1: ..."), or None."""
    for path in sorted(Path(run_dir).glob("rank*-failure.json")):
        try:
            found = json.loads(path.read_text())
        except (OSError, ValueError):
            continue
        return f"rank {found['rank']}: {found['reason']}"
    return None


def dist_record(strategy: str, per_rank: list[dict[str, Any]]) -> dict[str, Any]:
    """The record's multi-process fields from every rank's {peak_mem_bytes, tokens, runtime_s, checksum}. Sharded
    strategies hold different shards per rank, so their checksums are not compared."""
    peaks = [r.get("peak_mem_bytes") for r in per_rank]
    sums = [r.get("checksum") for r in per_rank]
    in_sync = None if strategy in SHARDED else all(abs(s - sums[0]) <= 1e-9 * max(1.0, abs(sums[0]))
                                                            for s in sums)
    return {
        "world_size": len(per_rank), "dist_strategy": strategy,
        "peak_mem_bytes_per_rank": peaks, "peak_mem_bytes_max": max((p for p in peaks if p is not None), default=None),
        "train_tokens_per_rank": [r.get("tokens") for r in per_rank],
        "train_tokens_per_s_per_rank": [r["tokens"] / r["runtime_s"] if r.get("runtime_s") else None for r in per_rank],
        "weights_in_sync": in_sync,
    }
