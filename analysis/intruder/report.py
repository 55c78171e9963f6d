"""Intruder dimensions: how LoRA and full fine-tuning change a weight matrix's singular vectors.

After Shuttleworth et al., "LoRA vs Full Fine-tuning: An Illusion of Equivalence" (arXiv:2410.21228): a left
singular vector among the top k of a tuned matrix W is an *intruder* when its |cosine| with every left singular
vector of the pre-trained W0 is below epsilon. LoRA-family adapters are merged first (peft `merge_and_unload`);
full FT is compared as saved on every linear layer of the blocks, but its totals count only the matrices the
LoRA runs of the same model targeted, so counts compare like with like.

    python -m analysis.intruder runs/                     # every run folder under runs/
    python -m analysis.intruder RUN_DIR [RUN_DIR...] [--k 10] [--epsilon 0.5] [--epsilons 0.1..0.9] [--out DIR]

Each run folder gets `intruders.csv` (per matrix) and `intruders.npz` (max |cos| of every singular vector of W,
the update's singular values; reused next time); `--out` gets `intruder_summary.csv`, `intruder_groups.csv`,
`intruder_sweep.csv`, `intruder_k_fraction.csv`, `intruder_correlations.json` and the figures, and with
`--scale-intruders` the causal test (analysis/intruder/scaling.py). SVDs (analysis/intruder/svd.py): float32,
batched by shape, on the GPU when there is one; the pre-trained ones are cached once per base model in
`<cache>/svd/<model>/`. Tables: analysis/intruder/tables.py; figures: analysis/intruder/plots.py.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import time
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from omegaconf import OmegaConf

from analysis.intruder.svd import analyse_pairs, intruder_counts
from analysis.intruder.tables import (scalar_value, comparable_modules, correlations, group_table, k_fraction_counts,
                                      matrix_table, norm_matched)
from analysis.intruder.weights import weight_pairs
from harness.exits import error
from harness.errors import ConfigError, HarnessError
from harness.runfolder import RESULT_FILE, RunFolder, find_runs, is_run_folder, open_run, read_record

log = logging.getLogger("analysis.intruder")
VERSION = 2  # bump when the stored arrays change meaning (2: max |cos| of every singular vector, not the top 50)
K_SWEEP = (1, 2, 5, 10, 20, 50)
EPSILONS = tuple(round(0.1 * i, 1) for i in range(1, 10))
TABLE, ARRAYS = "intruders.csv", "intruders.npz"


# ---- run folders ----

class Run(RunFolder):
    """A run folder (harness/runfolder.py) with the label the analysis groups by."""

    @property
    def label(self) -> str:
        """Method, rank, alpha when it is not 2r, and learning rate: runs that share a label differ only in seed."""
        return run_label(self.result)


def run_label(result: dict[str, Any]) -> str:
    r, alpha, lr = result.get("r"), result.get("alpha"), result.get("lr")
    label = result["method"] + (f" r={r}" if r is not None else "")
    if r is not None and alpha is not None and alpha != 2 * r:
        label += f" alpha={alpha:g}"
    label += f" lr={lr:.3g}" if isinstance(lr, (int, float)) else ""
    chain = (result.get("init_from") or {}).get("chain")
    if chain:  # a continual stage: its W - W0 is the whole chain's, never pooled with another stage
        label += f" stage {len(chain) + 1} ({result['task']})"
    return label


def load_run(run_dir: Path) -> Run:
    return Run(**vars(open_run(run_dir)))


def collect_runs(paths: Sequence[Path]) -> list[Run]:
    """Run folders, expanding a folder of runs; runs that did not finish `ok` are skipped with a note."""
    folders: list[Path] = []
    for path in map(Path, paths):
        found = find_runs([path]) if path.is_dir() else []
        if not found:
            raise ConfigError(f"{path} is neither a run folder (with {RESULT_FILE}) nor a folder of run folders")
        folders += found
    runs, seen, ended = [], {}, Counter()
    for folder in folders:
        try:
            run = load_run(folder)
        except ConfigError as err:  # an unreadable or config-less record (an `invalid` run): skipped like the others
            record = read_record(folder) or {}
            status = record.get("status") or "unreadable"
            ended[status] += 1
            why = f"status {status}: {record.get('reason')}" if status not in ("ok", "unreadable") else str(err)
            print(f"skipping {folder.name}: {why}", file=sys.stderr)
            continue
        ended[run.result.get("status")] += 1
        if run.result.get("run_id") in seen:  # the same run in two sweeps' folders: one run, never two seeds
            print(f"skipping {folder}: the same run as {seen[run.result['run_id']]}", file=sys.stderr)
            continue
        seen[run.result.get("run_id")] = folder
        if run.result.get("status") != "ok":
            print(f"skipping {folder.name}: status {run.result.get('status')}: {run.result.get('reason')}", file=sys.stderr)
        elif run.result.get("saved_to") not in ("adapter", "model"):
            print(f"skipping {folder.name}: nothing saved to compare", file=sys.stderr)
        elif not run.saved.is_dir() and not (folder / ARRAYS).exists():  # records copied without their weights
            ended["ok without weights"], ended["ok"] = ended["ok without weights"] + 1, ended["ok"] - 1
            print(f"skipping {folder.name}: its {run.result['saved_to']}/ is not in the folder", file=sys.stderr)
        else:
            runs.append(run)
    if not runs:
        counts = ", ".join(f"{n} {status}" for status, n in ended.items() if n)
        raise ConfigError(f"no finished (status ok) run with saved weights among the {len(folders)} run folders "
                          f"given ({counts}); train some with harness.run first")
    return runs


def analyse_run(run: Run, device: torch.device, recompute: bool = False) -> dict[str, np.ndarray]:
    """The run's arrays (every singular vector's max |cos|), from its `intruders.npz` when that is newer than the
    run and of this VERSION."""
    stored = run.path / ARRAYS
    if stored.exists() and not recompute and stored.stat().st_mtime >= (run.path / RESULT_FILE).stat().st_mtime:
        arrays = dict(np.load(stored))
        if int(arrays["version"]) == VERSION:
            return arrays
    t0 = time.perf_counter()
    pairs = weight_pairs(run)
    dtype = str(next(iter(pairs.values()))[0].dtype).removeprefix("torch.")
    fingerprint = run.result.get("model_fingerprint")
    cache = run.cache / "svd" / run.result["model"] / f"{fingerprint}-{dtype}" if fingerprint else None
    arrays = analyse_pairs(pairs, None, device, cache)
    arrays |= {"version": np.array(VERSION), "seconds": np.array(time.perf_counter() - t0)}
    tmp = stored.with_name(f".{ARRAYS}.{os.getpid()}.tmp.npz")
    np.savez(tmp, **arrays)
    os.replace(tmp, stored)
    return arrays


def _log_wandb(run: Run, table: pd.DataFrame, row: dict[str, Any], mode: str) -> None:
    """The per-matrix table and totals as a W&B run beside the training run (same group, job_type analysis)."""
    try:
        import wandb

        from harness.tracking import resolve_mode

        project = OmegaConf.select(run.composed, "tracking.project", default=None) or "peft-harness"
        wb = wandb.init(project=project, group=run.result.get("group"), name=f"{run.result['run_id']}-intruders",
                        job_type="intruder-analysis", dir=str(run.path), mode=resolve_mode(mode),
                        config={"run_id": run.result["run_id"], "method": run.result["method"], "r": run.result.get("r")},
                        reinit="finish_previous", settings=wandb.Settings(silent=True, console="off"))
        wb.log({"intruders": wandb.Table(dataframe=table)})
        wb.summary.update({k: v for k, v in row.items() if isinstance(v, (int, float, str))})
        wb.finish()
    except Exception as err:  # noqa: BLE001 - the local table is the record; W&B is a copy
        log.warning("W&B logging of %s failed: %s", run.path.name, err)


def intruder_section(run_dirs: Sequence[Path], out_dir: Path, *, k: int = 10, epsilon: float = 0.5,
                     epsilons: Sequence[float] = EPSILONS, ks: Sequence[int] = K_SWEEP, device: str | None = None,
                     recompute: bool = False, wandb_mode: str = "none") -> tuple[list[Path], pd.DataFrame]:
    """The whole analysis for a set of runs: per-run tables, the summary (one row per run), the k x epsilon
    sweep, correlations and figures in `out_dir`. Returns (figure paths, summary) for the analysis report."""
    from analysis.intruder.plots import make_figures

    dev = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    epsilons = sorted(set(epsilons) | {epsilon})
    ks = sorted(set(ks) | {k})
    runs = collect_runs(run_dirs)
    arrays = [analyse_run(run, dev, recompute) for run in runs]
    comparable = comparable_modules(runs, arrays)
    tables, rows, sweep, fractions, spectra = [], [], [], [], {}
    for run, arr in zip(runs, arrays):
        res = run.result
        only = comparable.get(res["model"]) if res["saved_to"] == "model" else None
        table = matrix_table(run, arr, k, epsilon, epsilons, only or None)
        table.to_csv(run.path / TABLE, index=False)
        used = table["compared"].to_numpy()
        counts = {c: int(table.loc[used, c].sum()) for c in ["intruders", *[f"eps_{e:g}" for e in epsilons]]}
        row = {"run_id": res["run_id"], "label": run.label, "model": res["model"], "method": res["method"],
               "r": res.get("r"), "alpha": res.get("alpha"), "lr": res.get("lr"), "seed": res.get("seed"),
               "task": res.get("task"), "precision": res.get("precision"),
               "n_matrices": int(used.sum()), "matrices_with_intruders": int((table.loc[used, "intruders"] > 0).sum()),
               **counts, "update_erank_mean": float(table.loc[used, "update_erank"].mean()),
               "rel_update_mean": float(table.loc[used, "rel_update"].mean()), "score": scalar_value(res.get("score")),
               "val_score": scalar_value(res.get("val_score")), "base_score": scalar_value(res.get("base_score")),
               "forgetting": scalar_value(res.get("forgetting")), "forgetting_probe": res.get("forgetting_probe"),
               "embedding_drift": scalar_value(res.get("embedding_drift")), "analysis_s": float(arr.get("seconds", np.nan))}
        rows.append(row)
        tables.append(table)
        sweep += [{"run_id": res["run_id"], "label": run.label, "method": res["method"], "r": res.get("r"),
                   "seed": res.get("seed"), "k": kk, "epsilon": e,
                   "count": int(intruder_counts(arr["maxcos"][used], kk, e).sum())} for kk in ks for e in epsilons]
        fractions += [{"run_id": res["run_id"], "label": run.label, "method": res["method"], "r": res.get("r"),
                       "seed": res.get("seed"), "k_fraction": f, "epsilon": epsilon, "count": c}
                      for f, c in k_fraction_counts(arr, used, epsilon).items()]
        sv = arr["update_sv"][used].astype(np.float64)
        spectra[res["run_id"]] = np.nanmean(sv / np.maximum(sv[:, :1], 1e-30), axis=0)
        if wandb_mode != "none":
            _log_wandb(run, table, row, wandb_mode)
    summary = pd.DataFrame(rows)
    out_dir.mkdir(parents=True, exist_ok=True)
    summary.to_csv(out_dir / "intruder_summary.csv", index=False)
    group_table(summary, epsilons).to_csv(out_dir / "intruder_groups.csv", index=False)
    wide = "eps_0.7" if 0.7 in epsilons else f"eps_{max(epsilons):g}"  # the loosest threshold shown in the README
    matched = [norm_matched(summary, c) for c in ("intruders", wide)]
    matched[0].merge(matched[1][["bin", "r", f"{wide}_mean"]], on=["bin", "r"]).to_csv(
        out_dir / "intruder_norm_matched.csv", index=False)
    (sweep_df := pd.DataFrame(sweep)).to_csv(out_dir / "intruder_sweep.csv", index=False)
    (fraction_df := pd.DataFrame(fractions)).to_csv(out_dir / "intruder_k_fraction.csv", index=False)
    corr = correlations(summary)
    (out_dir / "intruder_correlations.json").write_text(json.dumps({"k": k, "epsilon": epsilon, **corr}, indent=2))
    figures = make_figures(summary, sweep_df, fraction_df, pd.concat(tables, ignore_index=True), spectra, corr,
                           out_dir, k=k, epsilon=epsilon)
    return figures, summary


# ---- command line ----

def parse_floats(text: str) -> list[float]:
    """'0.1,0.3,0.5' or '0.1..0.9' (steps of 0.1)."""
    try:
        if ".." in text:
            lo, hi = (float(x) for x in text.split(".."))
            return [round(x, 4) for x in np.arange(lo, hi + 1e-9, 0.1)]
        return [float(x) for x in text.split(",") if x]
    except ValueError:
        raise ConfigError(f"cannot read {text!r} as numbers; use e.g. 0.1..0.9 or 0.3,0.5,0.7") from None


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m analysis.intruder", description=__doc__.split("\n\n")[0])
    p.add_argument("run_dirs", nargs="+", type=Path, help="run folders, or folders holding run folders")
    p.add_argument("--k", type=int, default=10, help="top-k singular vectors of W tested (default 10)")
    p.add_argument("--epsilon", type=float, default=0.5, help="threshold of the headline counts (default 0.5)")
    p.add_argument("--epsilons", default="0.1..0.9", help="thresholds swept (default 0.1..0.9)")
    p.add_argument("--ks", default=",".join(map(str, K_SWEEP)), help="k values swept at --epsilon")
    p.add_argument("--out", type=Path, default=None, help="figures and summary (default: <runs folder>/intruder-analysis)")
    p.add_argument("--device", default=None, help="cpu or cuda (default: cuda when available)")
    p.add_argument("--recompute", action="store_true", help="ignore the runs' stored intruders.npz")
    p.add_argument("--wandb", default="none", choices=["none", "auto", "online", "offline"], help="also log tables to W&B")
    p.add_argument("--scale-intruders", default=None, metavar="LAMBDAS",
                   help="the causal test: rescore each run with its intruders scaled by these fractions kept, "
                        "e.g. 0.3,0.5,0.7,1.0 (analysis/intruder/scaling.py)")
    args = p.parse_args(argv)
    try:
        if args.k < 1:
            raise ConfigError(f"--k must be a positive integer, got {args.k}")
        epsilons = parse_floats(args.epsilons)
        if not all(0 < e <= 1 for e in [*epsilons, args.epsilon]):
            raise ConfigError("epsilons are |cosine| thresholds: use values in (0, 1], e.g. --epsilons 0.1..0.9")
        ks = [int(x) for x in parse_floats(args.ks)]
        first = Path(args.run_dirs[0]).resolve()
        out = args.out or (first.parent if is_run_folder(first) else first) / "intruder-analysis"
        t0 = time.perf_counter()
        lambdas = parse_floats(args.scale_intruders) if args.scale_intruders else []
        if not all(0 <= lam <= 1 for lam in lambdas):
            raise ConfigError("--scale-intruders takes fractions kept in [0, 1], e.g. 0.3,0.5,0.7,1.0")
        figures, summary = intruder_section(args.run_dirs, out, k=args.k, epsilon=args.epsilon, epsilons=epsilons,
                                            ks=ks, device=args.device, recompute=args.recompute, wandb_mode=args.wandb)
        if lambdas:
            from analysis.intruder.scaling import scaling_section

            with_intruders = set(summary.loc[summary["intruders"] > 0, "run_id"])
            figures += scaling_section(collect_runs(args.run_dirs), lambdas, out, k=args.k, epsilon=args.epsilon,
                                       device=torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu")),
                                       with_intruders=with_intruders)
    except HarnessError as err:
        return error(err)
    cols = ["label", "seed", "n_matrices", "intruders", "matrices_with_intruders", f"eps_{0.3:g}", f"eps_{0.7:g}",
            "update_erank_mean", "rel_update_mean", "score", "forgetting", "analysis_s"]
    with pd.option_context("display.width", 200, "display.max_columns", 20):
        print(summary[[c for c in cols if c in summary]].to_string(index=False, float_format="%.4g"))
    print(json.dumps(json.loads((out / "intruder_correlations.json").read_text())))
    print(f"{len(summary)} runs analysed in {time.perf_counter() - t0:.1f} s (k={args.k}, epsilon={args.epsilon}); "
          f"figures in {out}: {', '.join(f.name for f in figures)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
