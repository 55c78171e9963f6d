"""The run record: `result.json` (written atomically), its status enum, and provenance stamps."""

from __future__ import annotations

import functools
import hashlib
import json
import os
import tempfile
from datetime import datetime, timezone
from dataclasses import dataclass
from enum import Enum
from importlib import metadata
from pathlib import Path
from typing import Any

from harness.assets import REPO_ROOT
from harness.provenance import installed_versions

RESULT_FILE = "result.json"
DRIVER = "driver"    # harness.pipeline.execute (and harness.run for a run that raised): how and when the run ended
OUTSIDE = "outside"  # not written by a run (a maintenance script)


@dataclass(frozen=True)
class Field:
    """Keys of result.json documented together, what they mean, which of them every finished record must hold
    (`required`), which become columns of the analysis frame (analysis/runs.py), and the phase that writes them
    (harness/pipeline.py; tests/test_phases.py checks that no phase writes another's keys)."""

    keys: tuple[str, ...]
    meaning: str
    columns: tuple[str, ...] = ()
    required: tuple[str, ...] = ()
    phase: str = ""  # the run phase that writes these keys (harness/phases/), DRIVER or OUTSIDE


# The schema of result.json: the docs' table of the record (docs/runs.md) is generated from it (`markdown_table`,
# checked by tests/test_schema.py), and every key a run writes is in it.
FIELDS: tuple[Field, ...] = (
    Field(('run_id', 'task', 'model', 'method', 'r', 'alpha', 'targets', 'seed', 'group'),
        'identity: `run_id` (task, model, method, rank, targets, seed and a hash of the effective config, the '
        "folder's name), the axes it is made of (`r`, `alpha`, `targets` null where the method ignores them) and "
        "the sweep's `group`",
        columns=('run_id', 'task', 'model', 'method', 'r', 'alpha', 'targets', 'seed', 'group'),
        required=('run_id', 'task', 'model', 'method', 'r', 'alpha', 'targets', 'seed'), phase='load'),
    Field(('status', 'reason'),
        '`running`, `ok`, `collapsed`, `paused` (stopped at a successive-halving rung with a checkpoint, '
        '`rung_step`; not a finished run), `failed` (an error, or a trainable tensor that never trained: see '
        '`update_check`), `invalid`, `oom`, `diverged`, `interrupted` (harness/results.py). `collapsed`: trained '
        "to the end and finite, but the training loss ended more than 5% above its start, or a classifier's "
        'validation predictions fell onto one class (>= 95% of >= 30 rows and >= 10 points above that class\'s '
        'share of the references); scores kept, never selected or '
        'averaged, not retried by a resumed sweep',
        columns=('status', 'reason'), required=('status',), phase=DRIVER),
    Field(('params_total', 'params_trainable', 'trainable_pct'),
        "peft's own count for adapters",
        columns=('params_total', 'params_trainable', 'trainable_pct'),
        required=('params_total', 'params_trainable', 'trainable_pct'), phase='method'),
    Field(('params_effective', 'adalora'),
        'AdaLoRA only: `params_trainable` is what was allocated (init_r ranks everywhere, what the optimizer held); '
        '`params_effective` what the final model uses (the triplets the pruning kept, plus a trained head); '
        '`adalora` the schedule (`init_r`, `target_r`, `total_step`, `tinit`, `tfinal`, `schedule_end_step` = '
        'total_step - tfinal, where the rank pattern was fixed) and `ranks_allocated` / `ranks_kept`',
        columns=('params_effective',), phase='train'),
    Field(('peak_mem_bytes', 'peak_reserved_bytes', 'mem_kind'),
        'CUDA: peak *allocated* (and *reserved*) during training after `reset_peak_memory_stats` '
        "(`cuda_allocated`). CPU: the process's peak resident set size during training, reset at train start "
        "through `/proc/self/clear_refs` after glibc's `malloc_trim` hands back heap freed before training "
        '(`cpu_rss`; it includes the Python process, the model, optimizer states, activations and heap glibc '
        'keeps between steps)',
        columns=('peak_mem_bytes', 'peak_reserved_bytes', 'mem_kind'), required=('peak_mem_bytes', 'mem_kind'), phase='train'),
    Field(('peak_driver_bytes', 'driver_mem_kind', 'cuda_alloc_conf'),
        "CUDA with pynvml (`pip install nvidia-ml-py`): the driver's memory for this process, nvidia-smi's figure "
        "(CUDA context and the caching allocator's reserve included), peak of samples every 0.1 s during "
        'training; `PYTORCH_CUDA_ALLOC_CONF` as set for the run',
        phase='train'),
    Field(('train_begin_mem', 'largest_batch'),
        'memory at the start of training (CUDA allocated/reserved; CPU resident size and the heap released just '
        'before); the largest micro-batch trained: tokens, rows, longest row, logit positions, whether flattened',
        phase='train'),
    Field(('train_tokens_per_s', 'train_samples_per_s', 'train_runtime_s'),
        'non-padding tokens (Trainer\'s `include_num_input_tokens_seen="non_padding"`) over the training loop '
        'alone: periodic validation inside the loop (`eval_s`) is subtracted (`train_loop_s` is the loop with it)',
        columns=('train_tokens_per_s', 'train_runtime_s'),
        required=('train_tokens_per_s', 'train_samples_per_s', 'train_runtime_s'), phase='train'),
    Field(('train_steps', 'train_epochs', 'train_rows', 'budget_unit'),
        'the budget: optimizer steps, passes over the `train_rows` training rows, and whether it was given as '
        '`steps` or `epochs`',
        columns=('train_steps', 'train_epochs', 'train_rows'), phase='load'),
    Field(('train_examples', 'train_tokens'),
        'examples trained (over all processes) and non-padding tokens trained',
        columns=('train_examples', 'train_tokens'), phase='train'),
    Field(('world_size', 'dist_strategy', 'dist_wrapper', 'peak_mem_bytes_per_rank', 'peak_mem_bytes_max',
           'train_tokens_per_rank', 'train_tokens_per_s_per_rank', 'weights_in_sync'),
        'several processes only (torchrun / accelerate launch; harness/distributed.py): the world size, the `dist` '
        'strategy and the wrapper Trainer actually used, every rank\'s peak memory (same kind as `peak_mem_bytes`, '
        'which is rank 0\'s) and its maximum, every rank\'s non-padding tokens and tokens/s (`train_tokens` and '
        '`train_tokens_per_s` are the global figures), and whether the trained weights ended equal on every rank '
        '(null for sharded strategies)',
        phase='train'),
    Field(('val_score', 'val_metrics'),
        "the task's scorer on the whole validation split after training: what learning-rate selection reads; the "
        'test split (`score`) is never used for a choice',
        columns=('val_score',), phase='scores'),
    Field(('base_val_score', 'base_val_metrics'),
        'the same for the untuned model',
        columns=('base_val_score',), phase='untuned_scores'),
    Field(('val_curve', 'eval_s', 'eval_subset'),
        'with `train.eval_every=N`: `{step, epoch, tokens, val_score, train_loss}` every N steps on the first '
        '`train.eval_subset` validation rows (also W&B `val/score`), and the seconds it took',
        columns=('val_curve', 'eval_s'), phase='train'),
    Field(('base_cached', 'base_eval_s'),
        "whether the untuned model's scores came from the per-cell cache (`paths.base_scores`, default "
        '`.cache/base-scores/`; keyed by weights, precision, quantisation, data, task and evaluation settings, '
        'scoring code and versions; the seed too for encoders, whose head is freshly initialised), and the '
        'seconds they took',
        phase='untuned_scores'),
    Field(('lr', 'lr_protocol'),
        'the learning rate trained at; `two-phase-search` / `two-phase-seeds` when an `lr_search` sweep ran it '
        '(search on the first seed / the other seeds at the selected rate), `selection-seed-search` / '
        '`selection-seed-report` with a held-out `selection_seed` (the analysis leaves search runs out of reported '
        'means)',
        columns=('lr', 'lr_protocol'), phase='load'),
    Field(('adapter_bytes',),
        'bytes on disk of what the run saved (`adapter/`, or `model/` for full FT)',
        columns=('adapter_bytes',), required=('adapter_bytes',), phase='save'),
    Field(('score', 'primary_metric', 'metrics', 'samples'),
        "the task's primary metric on the test split, all metrics, five input/reference/output triples",
        columns=('score', 'primary_metric'), required=('score', 'metrics'), phase='scores'),
    Field(('base_score', 'base_metrics'),
        'the same for the untuned model',
        columns=('base_score',), required=('base_score',), phase='untuned_scores'),
    Field(('items_file', 'floors', 'floor_name', 'floor_score', 'floor_val_score'),
        'per-item records (harness/items.py): `items_file` names `items.jsonl.gz` beside the record, one row per '
        "(split, who, item) for validation and test: the tuned model's, the untuned model's and each trivial "
        "floor's items, with the item's score and the statistics whose sums give the corpus metric; `floors`: "
        "each trivial floor of the task (`Task.floors`: classify's majority class of the training labels, style's "
        'copied source, ...) as `{validation, test}` primary scores; `floor_name`: the best floor on validation '
        'among those and `base` (the untuned model), `floor_score` its test score, `floor_val_score` its '
        'validation score',
        columns=('floor_name', 'floor_score', 'floor_val_score'), phase='save'),
    Field(('forgetting', 'forgetting_probe', 'forgetting_after', 'embedding_drift'),
        'the forgetting probe on general English: causal LMs (`lm-loss`) loss after minus before training, with '
        "`forgetting_before`, `forgetting_after`; encoders (`sentence-similarity`) 1 - Spearman's rho of pairwise "
        "similarities, with `embedding_drift`, the mean cosine distance of the probe's embeddings before and after "
        '(see [Tasks](configuration.md#tasks))',
        columns=('forgetting',), phase='scores'),
    Field(('forgetting_before',),
        "causal LMs: the untuned model's loss on the probe (cached with its scores)",
        phase='untuned_scores'),
    Field(('quantization', 'weight_footprint_bytes'),
        'how the base was loaded (QLoRA: backend, NF4, double quantisation, compute dtype, modules left '
        'unquantised) and its weight bytes',
        phase='load'),
    Field(('loss_curve',),
        '`(step, loss)` as Trainer logged it',
        phase='train'),
    Field(('update_check',),
        'did training really happen (harness/update_check.py): per parameter group (name with layer numbers as '
        '`*`) the tensors, how many got a finite non-zero gradient and how many moved, the RMS gradient norm over '
        "steps, and `rel_change` = ||W - W0|| / ||W0|| (null when W0 = 0, as LoRA's B, or when the trainable "
        'tensors exceed 64 MiB, as full FT, whose copy would add to the measured peak). A run in which any '
        'trainable tensor never got a gradient or never moved ends `failed`, naming them, and saves nothing. '
        '`not_trained` lists them',
        phase='train'),
    Field(('code_fingerprint',),
        'hash of harness/, conf/ and hydra_plugins/: a resumed sweep skips a run recorded `invalid` under the '
        'same config and the same code (`rerun=true` retries)',
        phase='load'),
    Field(('label_set', 'class_balance'),
        'classification tasks: the classes (the builtin sentiment labels, or every label of the training rows of '
        'the user\'s data, in the order of the encoder head) and the rows of each class in the train, validation '
        'and test splits the run used',
        phase='load'),
    Field(('base_model',),
        '`hub_id` (also `base_model_name_or_path` in `adapter_config.json`), `local_path` (the folder the run '
        'loaded), `source`; `model=hf`: `local_path` is model.path as a folder (null for a hub id) and `hub_id` the '
        "id, or a folder's config.json `_name_or_path` when that names one (else null)",
        phase='save'),
    Field(('config', 'config_hash', 'data_fingerprint', 'model_fingerprint'),
        'what is needed to reproduce the run',
        columns=('config_hash', 'data_fingerprint'), phase='load'),
    Field(('versions', 'git_commit', 'git_dirty', 'diff_file', 'versions_match_lock', 'lock_mismatches'),
        'torch, transformers, peft, bitsandbytes, ... and the harness commit (`-dirty` when the code, i.e. '
        'harness/, conf/, hydra_plugins/, sweeps/ or pyproject.toml, differs from it, untracked files included: '
        '`git_dirty`); a dirty run saves that difference beside result.json (`diff_file`: `source.diff`, '
        '`git apply` on a checkout of the commit rebuilds the code; harness/provenance.py); whether every package '
        '`requirements.lock` pins (all but torch) is installed at its locked version, and `{name: {locked, '
        'installed}}` for those that are not (null without a lock file). `python -m harness.rerun RUN_DIR` '
        're-runs a record from all this',
        required=('versions', 'git_commit'), phase='load'),
    Field(('rung_step',),
        'the successive-halving rung a `paused` run stopped at (`lr_halving` sweeps, harness/halving.py); its '
        'validation score there is its `val_curve` point at that step',
        columns=('rung_step',), phase='train'),
    Field(('started_at', 'pid', 'host'),
        'provenance: when and where the run started',
        required=('started_at',), phase='load'),
    Field(('finished_at',),
        'when the run ended (any status but `running`)',
        columns=('finished_at',), required=('finished_at',), phase=DRIVER),
    Field(('resumed_from',),
        'the checkpoint a re-run continued from',
        phase='train'),
    Field(('rehashed_from',),
        'the run_id a committed record had before the definition of the config hash changed (its folder was '
        'renamed)',
        phase=OUTSIDE),
    Field(('precision', 'max_steps', 'epochs'),
        'the precision trained in (`auto` resolved: `bf16` frozen base for adapters, `bf16-mixed` for full FT and '
        'continual stages; `fp32` where the hardware has no native bf16, while the run id keeps the bf16 '
        'resolution: config.RunSpec.precision), the resolved step count and the epochs asked for (null when the budget was steps)',
        columns=('precision', 'max_steps'), phase='load'),
    Field(('init_from',),
        "continual stages (`init_from=<run folder>`): the parent's run_id, path and chain",
        phase='load'),
    Field(('earlier_tasks', 'forgetting_total', 'earlier_eval_s'),
        "continual stages: every earlier stage's task re-scored now against its score at that stage; general-text "
        "forgetting since the root's base; the seconds that took",
        phase='earlier_stages'),
    Field(('device', 'torch_threads', 'startup_s', 'model_load_s'),
        'where and how long: `cuda` or `cpu`, torch\'s intra-op threads (under the joblib launcher each of its '
        'n_jobs worker processes gets cores // n_jobs), seconds from the process\'s start to the run\'s (interpreter, '
        'imports, config; the first run of a process only, null for a sweep\'s later runs), and to load the model',
        phase='load'),
    Field(('final_eval_s', 'final_probe_s'),
        'seconds to score the tuned model (validation, test, probe) and the forgetting probe\'s share of that',
        phase='scores'),
    Field(('train_loop_s',),
        'seconds of the training loop with periodic validation in it',
        phase='train'),
    Field(('mem_after_load',),
        'memory after loading the model (CUDA allocated/reserved, CPU resident size)',
        phase='load'),
    Field(('mem_after_method', 'target_modules'),
        'memory after applying the method; the module names the method adapted',
        phase='method'),
    Field(('train_loss', 'train_steps_done', 'train_epochs_done'),
        "Trainer's mean training loss, the steps and epochs it reached",
        phase='train'),
    Field(('saved_to',),
        '`adapter` or `model`, the folder the run saved',
        phase='save'),
    Field(('phases_s',),
        'seconds of each phase of the run (`load`, `untuned_scores`, `method`, `train`, `scores`, '
        '`earlier_stages`, `save`; harness/pipeline.py) and of the stopwatches inside them (`model_load`, '
        '`data_prep`, `fingerprints`, `tokenise`, `trainer_setup`, `train_call`, `evaluate`, `forgetting_probe`, '
        '`save_weights`), and `train_step_median`, the median optimizer step after two warm-up steps; written '
        'after every phase (benchmarks/timed_run.py reads it)',
        phase=DRIVER),
)
REQUIRED_KEYS = tuple(k for f in FIELDS for k in f.required)
RECORD_COLUMNS = tuple(k for f in FIELDS for k in f.columns)  # the record's part of the analysis frame


def documented_keys() -> set[str]:
    return {k for f in FIELDS for k in f.keys}


def markdown_table() -> str:
    """The table of result.json on docs/runs.md."""
    rows = ["| key in `result.json` | written by | meaning |", "|---|---|---|"]
    rows += ["| " + ", ".join(f"`{k}`" for k in f.keys) + f" | {f.phase} | " + f.meaning.replace("|", "\\|") + " |"
             for f in FIELDS]
    return "\n".join(rows)


class Status(str, Enum):
    """How a run ended. A resumed sweep re-runs all but OK and COLLAPSED (both are results; see `is_done`), and
    INVALID when the same config was rejected by the same code (`rejected_before`)."""

    RUNNING = "running"          # started; a record still saying this after the process is gone was killed hard
    OK = "ok"
    COLLAPSED = "collapsed"      # trained to the end, finite, but failed (loss ended above its start, or one-class
                                 # predictions); scores kept, never selected or averaged
    FAILED = "failed"            # an error in the run (reason recorded)
    INVALID = "invalid"          # the config cannot work (reason recorded); nothing was trained
    OOM = "oom"
    DIVERGED = "diverged"        # NaN / inf loss
    INTERRUPTED = "interrupted"  # SIGINT / SIGTERM
    PAUSED = "paused"            # stopped at a successive-halving rung (`rung_step`) with a checkpoint; not a
                                 # finished run: never selected or averaged; the sweeper resumes the survivors


DONE_STATUSES = (Status.OK.value, Status.COLLAPSED.value)


def is_done(previous: dict[str, Any] | None, config_hash: str) -> bool:
    """Whether a run folder already holds this config's finished result (re-running it would repeat it exactly)."""
    return bool(previous) and previous.get("status") in DONE_STATUSES and previous.get("config_hash") == config_hash


def rejected_before(previous: dict[str, Any] | None, config_hash: str) -> bool:
    """Whether a run folder records this config as `invalid` under this code: a retry would be rejected again."""
    return (bool(previous) and previous.get("status") == Status.INVALID.value
            and previous.get("config_hash") == config_hash and previous.get("code_fingerprint") == code_fingerprint())


@functools.lru_cache(maxsize=1)
def code_fingerprint() -> str:
    """SHA-256 (16 hex) of the harness's code and configs: what decides whether a config is accepted."""
    digest = hashlib.sha256()
    for pattern in ("harness/**/*.py", "conf/**/*.yaml", "hydra_plugins/**/*.py"):
        for path in sorted(REPO_ROOT.glob(pattern)):
            digest.update(str(path.relative_to(REPO_ROOT)).encode() + b"\0" + path.read_bytes())
    return digest.hexdigest()[:16]


def now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def write_json_atomic(path: Path, data: dict[str, Any]) -> None:
    """Write to a temporary file in the same folder, fsync, then rename: readers see old or new, never half."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            json.dump(data, fh, indent=2, sort_keys=False, default=str)
            fh.write("\n")
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def read_json(path: Path) -> dict[str, Any] | None:
    try:
        return json.loads(Path(path).read_text())
    except (OSError, json.JSONDecodeError):
        return None


def versions() -> dict[str, str | None]:
    found = installed_versions(["torch", "transformers", "peft", "bitsandbytes", "accelerate", "datasets", "evaluate",
                                "hydra-core", "wandb"])
    found["harness"] = metadata.version("peft-harness") if _installed("peft-harness") else None
    return found


def _installed(name: str) -> bool:
    try:
        metadata.version(name)
        return True
    except metadata.PackageNotFoundError:
        return False

