"""Runs under a launcher: a 2-process gloo DDP run on a tiny model writes one record with the global token count
and every rank's share; a rank killed mid-run ends the run truthfully without a hang; the `dist` group's bad
values are one line each; single-process runs keep their identity."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from conftest import REPO, compose
from harness.config import effective_config, run_id, validate
from harness.errors import ConfigError
from harness.items import read_items
from harness.training import last_checkpoint

TINY_RUN = ["model=tiny-llama", "tracking=none", "task.n_train=32", "task.n_eval=8", "train.batch_size=4"]


def torchrun(args: list[str], runs: Path, **kwargs) -> subprocess.Popen:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}
    for var in ("RANK", "WORLD_SIZE", "LOCAL_RANK"):
        env.pop(var, None)
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
           "-m", "harness.run", *TINY_RUN, *args, f"paths.runs={runs}"]
    kwargs.setdefault("stdout", subprocess.PIPE)
    return subprocess.Popen(cmd, cwd=REPO, env=env, stderr=subprocess.STDOUT, text=True, **kwargs)


def records(runs: Path) -> list[dict]:
    return [json.loads(p.read_text()) for p in runs.glob("*/result.json")]


@pytest.mark.parametrize("method", ["lora", "qlora"])
def test_two_process_ddp_run_writes_one_record_with_every_rank(method: str, tmp_path: Path) -> None:
    runs = tmp_path / "runs"
    proc = torchrun(["dist=ddp", "train.max_steps=3", f"method={method}"], runs)
    out, _ = proc.communicate(timeout=600)
    assert proc.returncode == 0, out[-3000:]
    [rec] = records(runs)  # one folder, one record: rank 1 wrote none
    assert rec["status"] == "ok" and rec["world_size"] == 2 and rec["dist_strategy"] == "ddp"
    assert rec["config"]["dist"] == {"strategy": "ddp", "world_size": 2}
    assert rec["dist_wrapper"] == "DistributedDataParallel"
    # Trainer's token count is global: the sum of what each rank's collator saw
    assert rec["train_tokens"] == sum(rec["train_tokens_per_rank"]) and min(rec["train_tokens_per_rank"]) > 0
    assert rec["train_examples"] == 3 * 4 * 2  # steps x per-device batch x ranks
    assert len(rec["peak_mem_bytes_per_rank"]) == 2 and rec["peak_mem_bytes_max"] == max(rec["peak_mem_bytes_per_rank"])
    assert rec["weights_in_sync"] is True  # both ranks ended with the same trained weights
    assert out.count("- untuned model:") == 1 and out.count("- tuned model:") == 1  # scored once, by rank 0
    assert not list(runs.glob("*/rank*-failure.json"))
    # per-item records: one file, written by rank 0, holding the tuned, untuned and floor rows
    [items_file] = runs.glob("*/items.jsonl.gz")
    assert rec["items_file"] == items_file.name and {"tuned", "base", "floor:majority"} == {
        r["who"] for r in read_items(items_file.parent)}
    single = run_id(compose(TINY_RUN + ["train.max_steps=3", f"method={method}"]))
    assert rec["run_id"] != single, "the world size sets the global batch, so it is part of the identity"


def _rank_pid(parent: int, rank: int) -> int | None:
    """The pid of the launched worker whose environment says RANK=<rank> (a descendant of the launcher)."""
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            env = (proc / "environ").read_bytes().split(b"\0")
            stat = (proc / "stat").read_text()
        except OSError:
            continue
        if f"RANK={rank}".encode() in env and any(e.startswith(b"TORCHELASTIC_RUN_ID=") for e in env) \
                and int(stat.rsplit(")", 1)[1].split()[1]) == parent:
            return int(proc.name)
    return None


def test_a_killed_rank_ends_the_run_truthfully_without_a_hang_and_the_run_resumes(tmp_path: Path) -> None:
    runs = tmp_path / "runs"
    # 1000 steps: the tiny model trains ~30 steps/s here, and a shorter run can be over before the kill
    args = ["dist=ddp", "train.max_steps=1000", "train.save_steps=10"]
    # the launcher's output goes to a file: an unread pipe fills (the progress bar alone) and blocks the ranks
    log = tmp_path / "first.log"
    with log.open("w") as out:
        proc = torchrun(args, runs, stdout=out)
    try:
        victim, deadline = None, time.time() + 300
        while time.time() < deadline and proc.poll() is None:
            # rank 1 is found as soon as it starts, and killed once a checkpoint that resume takes exists
            victim = victim or _rank_pid(proc.pid, 1)
            # (looking, not pruning: the checkpoint Trainer is writing is incomplete, and removing it failed the save)
            if victim and any(last_checkpoint(folder, remove_incomplete=False) for folder in runs.glob("*/checkpoints")):
                break
            time.sleep(0.2)
        assert proc.poll() is None, f"the run ended before the kill: {[r.get('reason') for r in records(runs)]}\n" \
                                    f"{log.read_text()[-2000:]}"
        assert victim is not None, f"rank 1 not found: {log.read_text()[-2000:]}"
        os.kill(victim, signal.SIGKILL)
        proc.wait(timeout=180)  # no hang: the launcher stops rank 0 too
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode != 0
    [rec] = records(runs)
    # rank 0 either hears it from gloo first (its collective's peer is gone: "Connection reset by peer" or
    # "Connection closed by peer", as the socket went) or is stopped by the launcher, whose SIGTERM often comes
    # while rank 0 is still recording gloo's error
    assert (rec["status"] == "failed" and "by peer" in rec["reason"]) or \
        (rec["status"] == "interrupted" and "launcher stops the other ranks" in rec["reason"]), \
        f"{rec['status']}: {rec.get('reason')}\n{log.read_text()[-3000:]}"
    # the same command again: both ranks resume from rank 0's last checkpoint and finish
    again = torchrun(args, runs)
    out, _ = again.communicate(timeout=600)
    assert again.returncode == 0, out[-3000:]
    [rec] = records(runs)
    assert rec["status"] == "ok" and rec["resumed_from"].startswith("checkpoint-") and rec["train_steps_done"] == 1000
    assert rec["weights_in_sync"] is True


def test_a_failing_rank_leaves_its_reason_for_rank_0(tmp_path: Path, monkeypatch) -> None:
    from harness import run
    from harness.results import Status

    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "1")
    run._fail(tmp_path, Status.OOM, "CUDA out of memory", multirun=True, exit_code=1)
    assert not (tmp_path / "result.json").exists(), "only rank 0 writes the record"
    monkeypatch.setenv("RANK", "0")
    run._fail(tmp_path, Status.INTERRUPTED, "interrupted (signal SIGTERM)", multirun=True, exit_code=130)
    rec = json.loads((tmp_path / "result.json").read_text())
    assert rec["status"] == "failed" and rec["reason"] == "rank 1: oom: CUDA out of memory"


def test_a_sigterm_while_a_failure_is_recorded_waits_for_the_record(tmp_path: Path, monkeypatch) -> None:
    """The race behind a record left saying "running": gloo's error reaches rank 0, and the launcher's SIGTERM
    (sent because rank 1 died) arrives while rank 0 is writing that failure down."""
    from harness import run

    for var in ("RANK", "WORLD_SIZE", "LOCAL_RANK"):
        monkeypatch.delenv(var, raising=False)
    fingerprint = run.code_fingerprint

    def sigterm_then_fingerprint():
        os.kill(os.getpid(), signal.SIGTERM)
        return fingerprint()

    monkeypatch.setattr(run, "code_fingerprint", sigterm_then_fingerprint)
    previous = signal.signal(signal.SIGTERM, run._terminate)
    interrupt_handler = signal.getsignal(signal.SIGINT)  # SIG_IGN in a background job, Python's own otherwise
    try:
        with pytest.raises(KeyboardInterrupt, match="SIGTERM"):  # raised once the record is written
            with run._signals_deferred():
                run._end(RuntimeError("Connection closed by peer"), compose(TINY_RUN), tmp_path, multirun=True)
        assert signal.getsignal(signal.SIGTERM) is run._terminate, "the run's own handler is put back"
    finally:
        signal.signal(signal.SIGTERM, previous)
    rec = json.loads((tmp_path / "result.json").read_text())
    assert rec["status"] == "failed" and rec["reason"] == "RuntimeError: Connection closed by peer"
    assert "Connection closed by peer" in (tmp_path / "error.txt").read_text()
    assert signal.getsignal(signal.SIGINT) is interrupt_handler, "the handlers are put back"


def test_single_process_runs_carry_no_dist_key() -> None:
    assert "dist" not in effective_config(compose([]))
    assert run_id(compose(["dist=ddp"])) == run_id(compose([])), "one process is one process, whatever the group says"


@pytest.mark.parametrize("overrides,world,expected", [
    (["dist=fsdp"], 1, "processes but this is one"),
    (["dist=ddp", "dist.gpus=4"], 1, "needs 4 processes but this is one"),
    (["dist=ddp", "dist.gpus=4"], 2, "the launcher started 2 processes"),
    (["dist.strategy=megatron"], 1, "dist must be one of"),
    (["dist=zero2"], 2, "needs DeepSpeed"),
    (["dist=fsdp", "method=qlora"], 2, "bnb_4bit_quant_storage=bfloat16"),
    (["dist.gpus=0"], 1, "dist.gpus"),
], ids=lambda v: " ".join(v) if isinstance(v, list) else str(v))
def test_bad_dist_values_are_one_line(overrides, world, expected, tmp_path, monkeypatch) -> None:
    if "zero2" in overrides[0]:
        import importlib.util

        if importlib.util.find_spec("deepspeed") is not None:
            pytest.skip("DeepSpeed is installed here")
    monkeypatch.setenv("WORLD_SIZE", str(world))
    with pytest.raises(ConfigError) as err:
        validate(compose([*overrides, f"paths.runs={tmp_path}"]))
    assert expected in str(err.value) and "\n" not in str(err.value)


def test_fsdp_on_a_cpu_is_refused_rather_than_run_as_ddp(monkeypatch) -> None:
    """accelerate only shards on accelerators; tried here: dist=fsdp under torchrun on this CPU trained with a
    DistributedDataParallel wrapper, so the harness refuses it instead of recording DDP as FSDP."""
    import torch

    from harness import distributed

    if torch.cuda.is_available():
        pytest.skip("a CUDA machine shards")
    monkeypatch.setenv("WORLD_SIZE", "2")
    with pytest.raises(ConfigError, match="use dist=ddp here"):
        distributed.check_device(effective_config(compose(["dist=fsdp", "method=full"])))
    distributed.check_device(effective_config(compose(["dist=ddp"])))  # DDP runs anywhere
    kwargs = distributed.training_kwargs(compose(["dist=fsdp-offload"]).dist)
    assert kwargs["fsdp"] is True and kwargs["fsdp_config"]["cpu_offload"] is True


def test_the_estimator_gives_one_gpus_share() -> None:
    """`dist=fsdp dist.gpus=N`: weights, gradients and optimizer states divided by N, two gathered layers on top,
    activations unchanged (arithmetic only: no GPU here to measure FSDP against)."""
    from harness.estimate import estimate_overrides

    one = estimate_overrides(["model=tiny-llama", "method=full"]).memory
    fsdp = estimate_overrides(["model=tiny-llama", "method=full", "dist=fsdp", "dist.gpus=4"]).memory
    zero2 = estimate_overrides(["model=tiny-llama", "method=full", "dist=zero2", "dist.gpus=4"]).memory
    ddp = estimate_overrides(["model=tiny-llama", "method=full", "dist=ddp", "dist.gpus=4"]).memory
    for term in ("weights", "gradients", "optimizer"):
        assert getattr(fsdp, term) == getattr(one, term) // 4
    assert fsdp.activations == one.activations and 0 < fsdp.dist_buffers <= one.weights + one.gradients
    assert zero2.weights == one.weights and zero2.optimizer == one.optimizer // 4
    assert ddp.dist_buffers == one.gradients and ddp.weights == one.weights  # DDP's buckets copy the gradients
    assert ddp.peak > one.peak
    # where layers, not the embeddings, make the model (an 8B Llama, built on the meta device): fsdp < zero2 < one
    big = {d: estimate_overrides(["model=llama-3.1-8b", "method=full", *d]).memory.peak
           for d in ((), ("dist=zero2", "dist.gpus=8"), ("dist=fsdp", "dist.gpus=8"))}
    assert big[("dist=fsdp", "dist.gpus=8")] < big[("dist=zero2", "dist.gpus=8")] < big[()]
    assert estimate_overrides(["model=tiny-llama", "method=full", "dist.gpus=1"]).memory.peak == one.peak
    assert estimate_overrides(["model=tiny-llama", "method=full", "dist=ddp"]).memory.peak == one.peak  # 1 GPU


SITECUSTOMIZE = """
# test hook: write the sbatch script submitit would submit, instead of submitting it
import os, submitit


def _map_array(self, fn, *args):
    text = self._executor._make_submission_file_text("python -u -m submitit.core._submit FOLDER", "UID")
    with open(os.environ["FAKE_SLURM_OUT"], "w") as fh:
        fh.write(text)
    raise SystemExit(0)


submitit.AutoExecutor.map_array = _map_array
"""


def test_a_multi_gpu_slurm_job_is_generated_without_a_cluster(tmp_path: Path) -> None:
    """hydra/launcher=slurm_ddp: one job per run, dist.gpus tasks and GPUs on one node, srun starting the tasks
    (the script submitit would hand to sbatch, captured before submission; a stub srun satisfies its check)."""
    (tmp_path / "sitecustomize.py").write_text(SITECUSTOMIZE)
    (tmp_path / "srun").write_text("#!/bin/sh\nexit 1\n")
    (tmp_path / "srun").chmod(0o755)
    script = tmp_path / "sbatch.txt"
    env = {**os.environ, "PATH": f"{tmp_path}:{os.environ['PATH']}", "PYTHONPATH": str(tmp_path),
           "FAKE_SLURM_OUT": str(script), "HF_HUB_OFFLINE": "1"}
    subprocess.run([sys.executable, "-m", "harness.run", "--multirun", *TINY_RUN, "dist=ddp", "dist.gpus=4",
                    "hydra/launcher=slurm_ddp", f"paths.runs={tmp_path / 'runs'}"], cwd=REPO, env=env,
                   capture_output=True, text=True, timeout=300)
    text = script.read_text()
    for line in ("#SBATCH --nodes=1", "#SBATCH --ntasks-per-node=4", "#SBATCH --gpus-per-node=4",
                 "export SUBMITIT_EXECUTOR=slurm", "srun --unbuffered"):
        assert line in text, text


def test_slurm_tasks_become_torch_ranks_and_keep_the_planned_identity(monkeypatch) -> None:
    from harness import distributed

    for var in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT"):
        monkeypatch.setenv(var, "unset")  # so that monkeypatch removes what submitit's export adds
        monkeypatch.delenv(var)
    planned = run_id(compose(TINY_RUN + ["dist=ddp", "dist.gpus=4"]))  # the sweep's head process: one process
    slurm = {"SUBMITIT_EXECUTOR": "slurm", "SLURM_JOB_ID": "77", "SLURM_NTASKS": "4", "SLURM_PROCID": "2",
             "SLURM_LOCALID": "2", "SLURM_JOB_NUM_NODES": "1", "SLURM_NODEID": "0", "SLURM_JOB_NODELIST": "gpu-node1"}
    for key, value in slurm.items():
        monkeypatch.setenv(key, value)
    assert distributed.world() == distributed.World(rank=2, local_rank=2, size=4)
    assert os.environ["MASTER_ADDR"] == "gpu-node1"
    assert run_id(compose(TINY_RUN + ["dist=ddp", "dist.gpus=4"])) == planned  # the task finds the planned folder
    assert run_id(compose(TINY_RUN + ["dist=ddp"])) == planned  # and so does a launch that leaves gpus null


def test_gpu_check_without_a_gpu_is_one_line() -> None:
    import torch

    if torch.cuda.is_available():
        pytest.skip("a GPU is here")
    proc = subprocess.run([sys.executable, "-m", "benchmarks.gpu_check"], cwd=REPO, capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 2 and proc.stderr.strip().startswith("error: no CUDA device"), proc.stderr


@pytest.mark.slow
def test_gpu_check_plumbing_runs_on_a_cpu(tmp_path: Path) -> None:
    """--cpu-smoke: the same runs, estimator check, NF4 comparison and reference on the CPU (3 steps)."""
    out = tmp_path / "gpu_check.json"
    proc = subprocess.run([sys.executable, "-m", "benchmarks.gpu_check", "--cpu-smoke", "--methods", "lora,qlora",
                           "--out", str(out)], cwd=REPO, capture_output=True, text=True, timeout=1200,
                          env={**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"})
    report = json.loads(out.read_text())
    assert proc.returncode == 0 and report["passed"], proc.stdout[-3000:] + proc.stderr[-3000:]
    assert report["runs"]["qlora"]["estimate"]["error_pct"] is not None and report["nf4"]["ok"]
    assert report["lora_over_reference_tokens_per_s"] > 0
