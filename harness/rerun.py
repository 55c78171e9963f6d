"""Re-run a record with its exact config and seed in a scratch folder, and say how far the result moved.

    python -m harness.rerun results/study/fair-classify/runs/<run_id>            # a temporary folder
    python -m harness.rerun RUN_DIR --out /tmp/rerun --threads 1 --keep

The code comes from the record's commit (`git archive`), with its `source.diff` applied when the record was made
from a dirty tree. A dirty record without a saved diff cannot be rebuilt from its commit: it is reported so and
re-run on this checkout (HEAD) instead, as is a record whose commit this repository lacks (`--on head` forces it;
`--on commit` runs the bare commit without the lost change, to tell a gap of code from one of environment).
The run's config is the record's effective config (`config`) written over the composed defaults of its model,
method, task and targets; the re-run's own record says whether its effective config came out identical.

Compared: `score`, `val_score` (absolute differences) and the loss curve (the largest absolute difference over the
logged steps, and the first step where the difference passes the tolerance: where the runs part). The default
tolerances come from the same config and seed run twice on this CPU (see TOLERANCE). Exit status 0 when every
quantity is within its tolerance, 1 when one is not, 2 for bad input.
"""

from __future__ import annotations

import argparse
import io
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from harness.assets import REPO_ROOT, cache_dir
from harness.exits import error
from harness.errors import ConfigError
from harness.provenance import CODE_PATHS, DIFF_FILE, source_state
from harness.results import RESULT_FILE, read_json, write_json_atomic

# Measured (2026-12-06, this 2-core CPU, one torch thread, transformers 5.25.0, torch 2.13.0+cpu): the config and
# seed of classify_minilm-l6_lora_r16_all-linear_s1_f3f60b53 (bf16 LoRA, 150 steps) run twice gave bitwise equal
# loss curves, validation curves, test outputs and scores (0.8433 / 0.8033 both times), though one run took 352 s
# and the other 617 s of training on a loaded machine. So a re-run with the same code, versions and threads
# reproduces exactly: any difference is a real one. The loss tolerance only absorbs JSON's float round trip.
TOLERANCE = {"score": 0.0, "val_score": 0.0, "loss": 1e-6}
GROUPS = ("model", "method", "task", "targets")  # config groups whose file the record's config names


@dataclass
class Source:
    """Where the re-run's code comes from: `commit` (+ `diff`), or this checkout (`head`), and why."""

    kind: str                      # "commit" or "head"
    commit: str | None = None
    diff: Path | None = None
    notes: list[str] = field(default_factory=list)

    def describe(self) -> str:
        if self.kind == "head":
            state = source_state()  # when planned: the checkout may move while the run trains
            return f"this checkout (HEAD {state.commit[:12] + ('-dirty' if state.dirty else '') if state else 'unknown'})"
        return f"commit {self.commit[:12]}" + (f" + {DIFF_FILE}" if self.diff else "")


def load_record(run_dir: Path) -> dict[str, Any]:
    """The record to re-run; a ConfigError (one line) for a folder without one or a record that cannot be re-run."""
    record = read_json(Path(run_dir) / RESULT_FILE)
    if record is None:
        raise ConfigError(f"{run_dir} holds no readable {RESULT_FILE}; pass a run folder (e.g. one under "
                          "results/study/<sweep>/runs/)")
    eff = record.get("config")
    if not eff or not all(isinstance(eff.get(g), dict) for g in ("model", "method", "task", "train")):
        raise ConfigError(f"{run_dir}/{RESULT_FILE} holds no effective config (`config`); it cannot be re-run")
    if eff.get("init_from"):
        raise ConfigError(f"{run_dir} is a continual stage (init_from={eff['init_from']}); re-run its sweep "
                          "(sweeps/study/continual.yaml), which rebuilds the chain of stages")
    if eff.get("dist"):
        raise ConfigError(f"{run_dir} ran in {eff['dist'].get('world_size')} processes; re-run it under the same "
                          "launcher (torchrun) instead")
    return record


def _has_commit(sha: str, repo: Path) -> bool:
    return subprocess.run(["git", "cat-file", "-e", f"{sha}^{{commit}}"], cwd=repo, capture_output=True).returncode == 0


def plan_source(record: dict[str, Any], run_dir: Path, repo: Path = REPO_ROOT, on: str = "record") -> Source:
    """Which code re-runs the record: its commit (with its diff when dirty), else this checkout, with the reason.
    `on="head"`: this checkout; `on="commit"`: the bare commit even when the record's diff is lost."""
    stamp = record.get("git_commit")
    if on == "head":
        return Source("head", notes=["--on head: re-run on this checkout"])
    if not stamp:
        return Source("head", notes=["the record names no commit: re-run on this checkout"])
    sha = stamp.removesuffix("-dirty")
    dirty = record.get("git_dirty", stamp.endswith("-dirty"))
    if not _has_commit(sha, repo):
        return Source("head", notes=[f"commit {sha[:12]} is not in this repository: re-run on this checkout"])
    if not dirty:
        return Source("commit", sha)
    if on == "commit":
        return Source("commit", sha, notes=[f"--on commit: the bare commit {sha[:12]}, without the record's "
                                            "uncommitted change"])
    diff = Path(run_dir) / (record.get("diff_file") or DIFF_FILE)
    if record.get("diff_file") and diff.is_file():
        return Source("commit", sha, diff)
    return Source("head", notes=[f"NOT REPRODUCIBLE FROM ITS COMMIT: made from a dirty tree ({stamp[:12]}-dirty) "
                                 f"and no {DIFF_FILE} was saved; re-run on this checkout, the gap below is "
                                 "the record's against today's code"])


def materialise(source: Source, dest: Path, repo: Path = REPO_ROOT) -> Path:
    """The folder to run from: the commit's code paths extracted to `dest` with the diff applied, or the checkout."""
    if source.kind == "head":
        return repo
    names = subprocess.run(["git", "ls-tree", "--name-only", source.commit], cwd=repo, capture_output=True,
                           text=True, check=True).stdout.split()
    paths = [p for p in CODE_PATHS if p in names]
    archive = subprocess.run(["git", "archive", "--format=tar", source.commit, *paths], cwd=repo,
                             capture_output=True, check=True).stdout
    dest.mkdir(parents=True, exist_ok=True)
    with tarfile.open(fileobj=io.BytesIO(archive)) as tar:
        tar.extractall(dest, filter="data")
    if source.diff is not None:
        done = subprocess.run(["git", "apply", "--whitespace=nowarn", str(source.diff.resolve())], cwd=dest,
                              capture_output=True, text=True)
        if done.returncode != 0:
            raise ConfigError(f"{source.diff} does not apply to commit {source.commit[:12]}: "
                              f"{done.stderr.strip().splitlines()[0] if done.stderr.strip() else 'git apply failed'}")
    return dest


def rerun_config(eff: dict[str, Any], runs: Path, cache: Path, conf_dir: Path) -> str:
    """A Hydra primary config (`--config-name`) that composes the run's groups and then writes the record's
    effective config over them: the name of the file written in `conf_dir`."""
    from omegaconf import OmegaConf

    defaults: list[Any] = ["config"]
    for group in GROUPS:
        if isinstance(eff.get(group), dict) and eff[group].get("name"):
            defaults.append({f"override {group}": eff[group]["name"]})
    defaults += [{"override tracking": "none"}, "_self_"]
    body = {k: v for k, v in eff.items() if not (k in ("r", "alpha", "targets") and v is None)}
    body["paths"] = {"runs": str(runs), "cache": str(cache)}
    conf_dir.mkdir(parents=True, exist_ok=True)
    (conf_dir / "rerun.yaml").write_text(OmegaConf.to_yaml(OmegaConf.create({"defaults": defaults, **body})))
    return "rerun"


def run_in(src: Path, conf_dir: Path, log_path: Path, threads: int | None, python: str) -> int:
    """`python -m harness.run` from `src` (its harness is imported first), offline, one process; the exit status."""
    env = os.environ | {"HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "WANDB_MODE": "disabled",
                        "TOKENIZERS_PARALLELISM": "false"}
    if threads:
        env |= {"OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads)}
    env.pop("PYTHONPATH", None)
    if src.resolve() != REPO_ROOT:  # extracted code: its record must not take the stamp of a checkout around --out
        env["GIT_CEILING_DIRECTORIES"] = str(src.resolve().parent)
    with open(log_path, "w") as log:
        return subprocess.run([python, "-m", "harness.run", "--config-dir", str(conf_dir), "--config-name", "rerun"],
                              cwd=src, env=env, stdout=log, stderr=subprocess.STDOUT).returncode


def compare(original: dict[str, Any], rerun: dict[str, Any], tol: dict[str, float]) -> list[dict[str, Any]]:
    """One row per compared quantity: original, re-run, difference, tolerance, within (None when either lacks it)."""
    rows = []
    for key in ("score", "val_score"):
        a, b = original.get(key), rerun.get(key)
        diff = None if a is None or b is None else b - a
        rows.append({"quantity": key, "original": a, "rerun": b, "diff": diff, "tolerance": tol[key],
                     "within": None if diff is None else abs(diff) <= tol[key] + 1e-12, "parts_at_step": None})
    rows.append(compare_curves(original.get("loss_curve") or [], rerun.get("loss_curve") or [], tol["loss"]))
    return rows


def compare_curves(a: list, b: list, tol: float) -> dict[str, Any]:
    """The loss curves over the steps both logged: the largest |difference|, its sign, and the first step where
    it passes `tol` (where the runs part). Curves logged at different steps are outside any tolerance."""
    first, second = {int(s): float(v) for s, v in a}, {int(s): float(v) for s, v in b}
    steps = sorted(set(first) & set(second))
    row: dict[str, Any] = {"quantity": "loss_curve", "original": f"{len(first)} points", "rerun": f"{len(second)} points",
                           "tolerance": tol, "diff": None, "within": None, "parts_at_step": None}
    if not steps:
        return row
    diffs = {s: second[s] - first[s] for s in steps}
    worst = max(steps, key=lambda s: abs(diffs[s]))
    row["diff"] = diffs[worst]
    row["worst_step"] = worst
    row["parts_at_step"] = next((s for s in steps if abs(diffs[s]) > tol), None)
    row["within"] = row["parts_at_step"] is None and set(first) == set(second)
    return row


def context_notes(original: dict[str, Any], rerun: dict[str, Any], threads: int | None) -> list[str]:
    """What else differs between the two runs: config, data, model, versions, threads, device."""
    notes = []
    if original.get("config") != rerun.get("config"):
        a, b = original.get("config") or {}, rerun.get("config") or {}
        changed = sorted(_flat_diff(a, b))
        notes.append(f"effective config differs at: {', '.join(changed[:8])}" + (" ..." if len(changed) > 8 else ""))
    for key in ("data_fingerprint", "model_fingerprint", "device"):
        if original.get(key) is not None and original.get(key) != rerun.get(key):
            notes.append(f"{key}: {original.get(key)} -> {rerun.get(key)}")
    va, vb = original.get("versions") or {}, rerun.get("versions") or {}
    moved = [f"{k} {va.get(k)} -> {vb.get(k)}" for k in sorted(set(va) | set(vb)) if va.get(k) != vb.get(k)]
    notes.append("versions: " + ("; ".join(moved) if moved else "the same as the record's"))
    used = rerun.get("torch_threads") or threads or f"OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS', 'unset')}"
    notes.append(f"torch threads: record {original.get('torch_threads', 'not recorded')}, re-run {used}"
                 + ("" if threads else " (from the environment)"))
    return notes


def _flat_diff(a: Any, b: Any, prefix: str = "") -> set[str]:
    if isinstance(a, dict) and isinstance(b, dict):
        return set().union(*(_flat_diff(a.get(k), b.get(k), f"{prefix}{k}.") for k in set(a) | set(b))) if a or b else set()
    return set() if a == b else {prefix.rstrip(".")}


def _fmt(value: Any) -> str:
    if isinstance(value, bool) or value is None:
        return {True: "yes", False: "NO", None: "-"}[value]
    if isinstance(value, float):
        return f"{value:+.4f}" if abs(value) < 10 else f"{value:.4g}"
    return str(value)


def _cell(row: dict[str, Any], key: str) -> str:
    value = row.get(key)
    if key == "diff" and row["quantity"] == "loss_curve" and value is not None:
        return f"{value:+.4f} (max, step {row['worst_step']})"
    if isinstance(value, float) and key in ("original", "rerun"):
        return f"{value:.4f}"
    return f"{value:g}" if key == "tolerance" else _fmt(value)


def table(rows: list[dict[str, Any]]) -> str:
    header = ["quantity", "original", "rerun", "diff", "tolerance", "within", "parts_at_step"]
    cells = [header] + [[_cell(r, h) for h in header] for r in rows]
    widths = [max(len(c[i]) for c in cells) for i in range(len(header))]
    return "\n".join("  ".join(c[i].ljust(widths[i]) for i in range(len(header))) for c in cells)


def rerun(run_dir: Path, out: Path, tol: dict[str, float], threads: int | None = None, on: str = "record",
          python: str = sys.executable) -> dict[str, Any]:
    """Re-run the record in `run_dir` under `out`; returns the report (also written to out/rerun.json)."""
    original = load_record(run_dir)
    source = plan_source(original, run_dir, on=on)
    described = source.describe()
    threads = threads or original.get("torch_threads")
    src = materialise(source, out / "src")
    runs, conf_dir = out / "runs", out / "conf"
    rerun_config(original["config"], runs.resolve(), cache_dir().resolve(), conf_dir)
    code = run_in(src, conf_dir.resolve(), out / "rerun.log", threads, python)
    found = sorted(runs.glob(f"*/{RESULT_FILE}"))
    if not found:
        raise ConfigError(f"the re-run wrote no record (exit status {code}); see {out / 'rerun.log'}")
    new = read_json(found[0]) or {}
    rows = compare(original, new, tol)
    report = {"run_id": original.get("run_id"), "run_dir": str(run_dir), "source": described,
              "source_notes": source.notes, "rerun_status": new.get("status"), "rerun_dir": str(found[0].parent),
              "notes": context_notes(original, new, threads), "rows": rows,
              "reproduced": all(r["within"] for r in rows) and new.get("status") == original.get("status")}
    write_json_atomic(out / "rerun.json", report)
    return report


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m harness.rerun", description=__doc__.splitlines()[0])
    parser.add_argument("run_dir", type=Path, help="a run folder holding result.json")
    parser.add_argument("--out", type=Path, help="scratch folder for the re-run (default: a temporary folder)")
    parser.add_argument("--on", choices=("record", "commit", "head"), default="record",
                        help="code to run: the record's commit (+ its diff), the bare commit, or this checkout")
    parser.add_argument("--threads", type=int, help="torch threads (default: the record's, else the environment's)")
    parser.add_argument("--score-tol", type=float, default=TOLERANCE["score"], help="largest |score difference|")
    parser.add_argument("--loss-tol", type=float, default=TOLERANCE["loss"], help="largest |loss difference| per step")
    parser.add_argument("--python", default=sys.executable, help="interpreter (e.g. a venv with the locked versions)")
    args = parser.parse_args(argv)
    if not (args.run_dir / RESULT_FILE).is_file():
        return error(f"{args.run_dir} holds no {RESULT_FILE}; pass a run folder (e.g. one under results/study/<sweep>/runs/)")
    if not shutil.which(args.python):
        return error(f"--python {args.python} is not an interpreter here; pass e.g. .venv/bin/python")
    tol = {"score": args.score_tol, "val_score": args.score_tol, "loss": args.loss_tol}
    out = args.out or Path(tempfile.mkdtemp(prefix="harness-rerun-"))
    try:
        report = rerun(args.run_dir, out, tol, args.threads, args.on, args.python)
    except ConfigError as err:
        return error(err)
    print(f"re-run of {report['run_id']} from {report['source']} -> {report['rerun_dir']} ({report['rerun_status']})")
    for note in report["source_notes"] + report["notes"]:
        print(f"  {note}")
    print(table(report["rows"]))
    print("reproduced within tolerance" if report["reproduced"] else "NOT reproduced within tolerance")
    return 0 if report["reproduced"] else 1


if __name__ == "__main__":
    sys.exit(main())
