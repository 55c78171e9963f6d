"""Intruder dimensions: how LoRA and full fine-tuning change a weight matrix's singular vectors.

After Shuttleworth et al., "LoRA vs Full Fine-tuning: An Illusion of Equivalence" (arXiv:2410.21228): a left
singular vector among the top k of a tuned matrix W is an *intruder* when its |cosine| with every left singular
vector of the pre-trained W0 is below epsilon. LoRA-family adapters are merged first (peft `merge_and_unload`);
full FT is compared as saved on every linear layer of the blocks, but its totals count only the matrices the
LoRA runs of the same model targeted, so counts compare like with like.

    python -m analysis.intruder runs/                     # every run folder under runs/
    python -m analysis.intruder RUN_DIR [RUN_DIR...] [--k 10] [--epsilon 0.5] [--epsilons 0.1..0.9] [--out DIR]

Each run folder gets `intruders.csv` (per matrix) and `intruders.npz` (max |cos| of W's top singular vectors,
W's and the update's singular values; reused next time); `--out` gets `intruder_summary.csv`, `intruder_sweep.csv`,
`intruder_correlations.json` and the figures. SVDs: float32, batched by shape, on the GPU when there is one; the
pre-trained ones are cached once per base model in `<cache>/svd/<model>/`.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import re
import sys
import time
from collections import defaultdict
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from omegaconf import DictConfig, OmegaConf
from scipy.stats import entropy, spearmanr

from harness.errors import ConfigError, HarnessError

log = logging.getLogger("analysis.intruder")
VERSION = 1  # bump when the stored arrays change meaning
K_SWEEP = (1, 2, 5, 10, 20, 50)
EPSILONS = tuple(round(0.1 * i, 1) for i in range(1, 10))
TABLE, ARRAYS = "intruders.csv", "intruders.npz"
LAYER_RE = re.compile(r"\.(?:layers|layer|h|blocks)\.(\d+)\.(.+)$")


# ---- the measurements, on plain tensors ----

def effective_rank(singular_values: Sequence[float] | np.ndarray) -> float:
    """Roy & Vetterli's effective rank, exp(entropy of s / sum s): 1 for a rank-1 update, n for n equal values.
    Low values mean the update concentrates in few directions (what LoRA's rank limit enforces)."""
    s = np.asarray(singular_values, dtype=np.float64)
    s = s[np.isfinite(s) & (s > 0)]
    return float(np.exp(entropy(s))) if s.size else 0.0


def _groups(shapes: dict[str, tuple[int, ...]], device: torch.device) -> Iterator[list[str]]:
    """Names grouped by matrix shape, in chunks small enough that one stacked SVD fits in memory."""
    budget = (8 if device.type == "cuda" else 1) * 2**30
    by_shape: dict[tuple[int, ...], list[str]] = defaultdict(list)
    for name, shape in shapes.items():
        by_shape[tuple(shape)].append(name)
    for shape, names in by_shape.items():
        per_chunk = max(1, budget // (shape[0] * shape[1] * 4 * 6))  # W, W0, U, V, W - W0, products
        for i in range(0, len(names), per_chunk):
            yield names[i:i + per_chunk]


def _stack(tensors: list[torch.Tensor], device: torch.device) -> torch.Tensor:
    return torch.stack([t.to(device=device, dtype=torch.float32) for t in tensors])


def pretrained_bases(w0: dict[str, torch.Tensor], device: torch.device, cache: Path | None) -> dict[str, torch.Tensor]:
    """Left singular vectors (all of them) of each pre-trained matrix; read from `cache` when an earlier call
    computed them, since every run of a base model compares against the same W0."""
    from safetensors.torch import load_file, save_file

    bases: dict[str, torch.Tensor] = {}
    missing: dict[str, torch.Tensor] = {}
    for name, w in w0.items():
        stored = cache / f"{name}.safetensors" if cache else None
        if stored is not None and stored.exists():
            tensors = load_file(stored)
            if tuple(tensors["shape"].tolist()) == tuple(w.shape):
                bases[name] = tensors["U"]
                continue
        missing[name] = w
    for group in _groups({n: tuple(w.shape) for n, w in missing.items()}, device):
        u, s, _ = torch.linalg.svd(_stack([missing[n] for n in group], device), full_matrices=False)
        for i, name in enumerate(group):
            bases[name] = u[i].cpu().contiguous()
            if cache is not None:
                cache.mkdir(parents=True, exist_ok=True)
                tmp = cache / f".{name}.{os.getpid()}.tmp"
                save_file({"U": bases[name], "S": s[i].cpu(), "shape": torch.tensor(missing[name].shape)}, tmp)
                os.replace(tmp, cache / f"{name}.safetensors")  # readers never see half a file
    return bases


def analyse_pairs(pairs: dict[str, tuple[torch.Tensor, torch.Tensor]], k_max: int, device: torch.device | str = "cpu",
                  cache: Path | None = None) -> dict[str, np.ndarray]:
    """For each (W0, W): max |cos| of W's top-k_max left singular vectors against all of W0's, and the singular
    values of the update W - W0. Counts for any k <= k_max and any epsilon follow without another SVD."""
    device = torch.device(device)
    names = list(pairs)
    index = {n: i for i, n in enumerate(names)}
    width = max(min(pairs[n][0].shape) for n in names)
    maxcos = np.full((len(names), k_max), np.nan, np.float32)
    update_sv = np.full((len(names), width), np.nan, np.float32)
    w0_fro = np.zeros(len(names), np.float32)
    bases = pretrained_bases({n: pairs[n][0] for n in names}, device, cache)
    for group in _groups({n: tuple(pairs[n][0].shape) for n in names}, device):
        w0 = _stack([pairs[n][0] for n in group], device)
        w = _stack([pairs[n][1] for n in group], device)
        u, s, _ = torch.linalg.svd(w, full_matrices=False)
        k = min(k_max, s.shape[-1])
        cos = (u[..., :k].mT @ _stack([bases[n] for n in group], device)).abs().amax(-1)
        delta_sv = torch.linalg.svdvals(w - w0)
        fro = torch.linalg.matrix_norm(w0)
        for i, name in enumerate(group):
            j = index[name]
            maxcos[j, :k], update_sv[j, :delta_sv.shape[-1]] = cos[i].cpu().numpy(), delta_sv[i].cpu().numpy()
            w0_fro[j] = fro[i].item()
    rows, cols = zip(*(tuple(pairs[n][0].shape) for n in names))
    return {"modules": np.array(names), "rows": np.array(rows), "cols": np.array(cols), "maxcos": maxcos,
            "update_sv": update_sv, "w0_fro": w0_fro}


def intruder_counts(maxcos: np.ndarray, k: int, epsilon: float) -> np.ndarray:
    """Per matrix: how many of the top-k singular vectors have max |cos| < epsilon (NaN: no such vector)."""
    return (maxcos[:, :k] < epsilon).sum(axis=1)


def count_intruders(w0: torch.Tensor, w: torch.Tensor, k: int = 10, epsilon: float = 0.5) -> int:
    """Intruder dimensions of one matrix pair (Definition 3.1 of the paper)."""
    return int(intruder_counts(analyse_pairs({"w": (w0, w)}, k)["maxcos"], k, epsilon)[0])


# ---- run folders ----

@dataclass
class Run:
    """A finished run folder: its record, its composed config and the harness cache it used."""

    run_dir: Path
    result: dict[str, Any]
    cfg: DictConfig
    cache: Path

    @property
    def label(self) -> str:
        return self.result["method"] + (f" r={self.result['r']}" if self.result.get("r") is not None else "")


def load_run(run_dir: Path) -> Run:
    from harness.assets import cache_dir
    from harness.results import read_result

    result = read_result(run_dir)
    if result is None:
        raise ConfigError(f"{run_dir} holds no readable result.json; pass run folders (paths.runs/<run_id>/) or a folder of them")
    composed = run_dir / ".hydra" / "config.yaml"
    cfg = OmegaConf.load(composed) if composed.exists() else OmegaConf.create(result.get("config") or {})
    if OmegaConf.select(cfg, "model.name") is None:
        raise ConfigError(f"{run_dir} has neither .hydra/config.yaml nor a config in result.json; re-run it with harness.run")
    return Run(run_dir, result, cfg, cache_dir(OmegaConf.select(cfg, "paths.cache", default=None)))


def collect_runs(paths: Sequence[Path]) -> list[Run]:
    """Run folders, expanding a folder of runs; runs that did not finish `ok` are skipped with a note."""
    folders: list[Path] = []
    for path in map(Path, paths):
        if (path / "result.json").exists():
            folders.append(path)
        elif path.is_dir() and any(path.glob("*/result.json")):
            folders += sorted(p.parent for p in path.glob("*/result.json"))
        else:
            raise ConfigError(f"{path} is neither a run folder (with result.json) nor a folder of run folders")
    runs = []
    for folder in folders:
        run = load_run(folder)
        if run.result.get("status") != "ok":
            print(f"skipping {folder.name}: status {run.result.get('status')}", file=sys.stderr)
        elif run.result.get("saved_to") not in ("adapter", "model"):
            print(f"skipping {folder.name}: nothing saved to compare", file=sys.stderr)
        else:
            runs.append(run)
    if not runs:
        raise ConfigError("no finished (status ok) run among the folders given; train some with harness.run first")
    return runs


def weight_pairs(run: Run) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """(W0, W) per changed matrix. W0 is the base in the dtype the run trained from; adapters are merged in
    float32, so the merge adds no rounding of its own."""
    from torch import nn

    from harness.config import CONF_DIR
    from harness.methods import resolve_targets
    from harness.models import load_model, load_tokenizer
    from harness.tasks import TASKS

    cfg = run.cfg
    tokenizer = load_tokenizer(cfg.model, run.cache)
    labels = TASKS[cfg.task.name].labels if cfg.model.kind == "encoder" else None
    base = load_model(cfg.model, run.cache, precision=cfg.train.precision, tokenizer=tokenizer, labels=labels)
    saved = run.run_dir / run.result["saved_to"]
    if run.result["saved_to"] == "model":
        names = resolve_targets(base, OmegaConf.load(CONF_DIR / "targets" / "all-linear.yaml"))
        tuned = dict(type(base).from_pretrained(saved, dtype=torch.float32).named_modules())
        return {n: (base.get_submodule(n).weight.detach(), tuned[n].weight.detach()) for n in names}
    from peft import PeftModel
    from peft.tuners.tuners_utils import BaseTunerLayer

    dtype = next(base.parameters()).dtype
    model = PeftModel.from_pretrained(base.float(), saved)
    layers = {n.removeprefix("base_model.model."): m for n, m in model.named_modules()
              if isinstance(m, BaseTunerLayer) and isinstance(m.get_base_layer(), nn.Linear)}
    if not layers:
        raise ConfigError(f"{run.run_dir.name}: method {run.result['method']} changes no linear weight; "
                          "the intruder analysis needs a LoRA-family or full fine-tuning run")
    w0 = {n: m.get_base_layer().weight.detach().to(dtype, copy=True) for n, m in layers.items()}
    merged = model.merge_and_unload()
    return {n: (w0[n], merged.get_submodule(n).weight.detach()) for n in w0}


def analyse_run(run: Run, k_max: int, device: torch.device, recompute: bool = False) -> dict[str, np.ndarray]:
    """The run's arrays, from its `intruders.npz` when that is newer than the run and holds k_max vectors."""
    stored = run.run_dir / ARRAYS
    if stored.exists() and not recompute and stored.stat().st_mtime >= (run.run_dir / "result.json").stat().st_mtime:
        arrays = dict(np.load(stored))
        if int(arrays["version"]) == VERSION and arrays["maxcos"].shape[1] >= k_max:
            return arrays
    t0 = time.perf_counter()
    pairs = weight_pairs(run)
    dtype = str(next(iter(pairs.values()))[0].dtype).removeprefix("torch.")
    fingerprint = run.result.get("model_fingerprint")
    cache = run.cache / "svd" / run.result["model"] / f"{fingerprint}-{dtype}" if fingerprint else None
    arrays = analyse_pairs(pairs, k_max, device, cache)
    arrays |= {"version": np.array(VERSION), "seconds": np.array(time.perf_counter() - t0)}
    tmp = stored.with_name(f".{ARRAYS}.{os.getpid()}.tmp.npz")
    np.savez(tmp, **arrays)
    os.replace(tmp, stored)
    return arrays


# ---- tables ----

def _scalar(value: Any) -> float:
    """A number from a record field that may be missing, a number, or a dict holding one."""
    if isinstance(value, dict):
        value = next((value[k] for k in ("forgetting", "delta", "value", "mean") if k in value), None)
    return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else float("nan")


def matrix_table(run: Run, arrays: dict[str, np.ndarray], k: int, epsilon: float,
                 epsilons: Sequence[float], compared: set[str] | None) -> pd.DataFrame:
    """One row per matrix: where it sits, its intruder counts, and how large and how spread its update is."""
    modules = [str(m) for m in arrays["modules"]]
    where = [LAYER_RE.search(m) for m in modules]
    maxcos, update_sv = arrays["maxcos"], arrays["update_sv"]
    update_fro = np.sqrt(np.nansum(update_sv.astype(np.float64) ** 2, axis=1))
    res = run.result
    return pd.DataFrame({
        "run_id": res["run_id"], "label": run.label, "model": res["model"], "method": res["method"], "r": res.get("r"),
        "alpha": res.get("alpha"), "seed": res.get("seed"), "module": modules,
        "layer": [int(m.group(1)) if m else -1 for m in where], "kind": [m.group(2) if m else n for m, n in zip(where, modules)],
        "rows": arrays["rows"], "cols": arrays["cols"],
        "compared": [compared is None or m in compared for m in modules],
        "intruders": intruder_counts(maxcos, k, epsilon),
        **{f"eps_{e:g}": intruder_counts(maxcos, k, e) for e in epsilons},
        "min_maxcos_topk": np.nanmin(maxcos[:, :k], axis=1),
        "update_erank": [effective_rank(s) for s in update_sv], "update_fro": update_fro,
        "update_top_sv": update_sv[:, 0], "rel_update": update_fro / np.maximum(arrays["w0_fro"], 1e-30),
    })


def comparable_modules(runs: list[Run], arrays: list[dict[str, np.ndarray]]) -> dict[str, set[str]]:
    """Per base model, the matrices its LoRA-family runs changed: full FT's totals count these only."""
    sets: dict[str, set[str]] = defaultdict(set)
    for run, arr in zip(runs, arrays):
        if run.result["saved_to"] == "adapter":
            sets[run.result["model"]] |= {str(m) for m in arr["modules"]}
    return sets


def correlations(summary: pd.DataFrame) -> dict[str, dict[str, Any]]:
    """Spearman's rho of the model-total intruder count against forgetting and against task score."""
    found = {}
    for other in ("forgetting", "score"):
        rows = summary[["intruders", other]].astype(float).dropna()
        if len(rows) < 3 or rows["intruders"].nunique() < 2 or rows[other].nunique() < 2:
            found[other] = {"rho": None, "p": None, "n": len(rows), "note": "needs >= 3 runs with varying values"}
            continue
        rho, p = spearmanr(rows["intruders"], rows[other])
        found[other] = {"rho": float(rho), "p": float(p), "n": len(rows)}
    return found


def _log_wandb(run: Run, table: pd.DataFrame, row: dict[str, Any], mode: str) -> None:
    """The per-matrix table and totals as a W&B run beside the training run (same group, job_type analysis)."""
    try:
        import wandb

        from harness.tracking import resolve_mode

        project = OmegaConf.select(run.cfg, "tracking.project", default=None) or "peft-harness"
        wb = wandb.init(project=project, group=run.result.get("group"), name=f"{run.result['run_id']}-intruders",
                        job_type="intruder-analysis", dir=str(run.run_dir), mode=resolve_mode(mode),
                        config={"run_id": run.result["run_id"], "method": run.result["method"], "r": run.result.get("r")},
                        reinit="finish_previous", settings=wandb.Settings(silent=True, console="off"))
        wb.log({"intruders": wandb.Table(dataframe=table)})
        wb.summary.update({k: v for k, v in row.items() if isinstance(v, (int, float, str))})
        wb.finish()
    except Exception as err:  # noqa: BLE001 - the local table is the record; W&B is a copy
        log.warning("W&B logging of %s failed: %s", run.run_dir.name, err)


def intruder_section(run_dirs: Sequence[Path], out_dir: Path, *, k: int = 10, epsilon: float = 0.5,
                     epsilons: Sequence[float] = EPSILONS, ks: Sequence[int] = K_SWEEP, device: str | None = None,
                     recompute: bool = False, wandb_mode: str = "none") -> tuple[list[Path], pd.DataFrame]:
    """The whole analysis for a set of runs: per-run tables, the summary (one row per run), the k x epsilon
    sweep, correlations and figures in `out_dir`. Returns (figure paths, summary) for the analysis report."""
    from analysis.intruder_plots import make_figures

    dev = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    epsilons = sorted(set(epsilons) | {epsilon})
    ks = sorted(set(ks) | {k})
    runs = collect_runs(run_dirs)
    arrays = [analyse_run(run, max(ks), dev, recompute) for run in runs]
    comparable = comparable_modules(runs, arrays)
    tables, rows, sweep, spectra = [], [], [], {}
    for run, arr in zip(runs, arrays):
        res = run.result
        only = comparable.get(res["model"]) if res["saved_to"] == "model" else None
        table = matrix_table(run, arr, k, epsilon, epsilons, only or None)
        table.to_csv(run.run_dir / TABLE, index=False)
        used = table["compared"].to_numpy()
        counts = {c: int(table.loc[used, c].sum()) for c in ["intruders", *[f"eps_{e:g}" for e in epsilons]]}
        row = {"run_id": res["run_id"], "label": run.label, "model": res["model"], "method": res["method"],
               "r": res.get("r"), "alpha": res.get("alpha"), "seed": res.get("seed"), "task": res.get("task"),
               "n_matrices": int(used.sum()), "matrices_with_intruders": int((table.loc[used, "intruders"] > 0).sum()),
               **counts, "update_erank_mean": float(table.loc[used, "update_erank"].mean()),
               "rel_update_mean": float(table.loc[used, "rel_update"].mean()), "score": _scalar(res.get("score")),
               "base_score": _scalar(res.get("base_score")), "forgetting": _scalar(res.get("forgetting")),
               "analysis_s": float(arr.get("seconds", np.nan))}
        rows.append(row)
        tables.append(table)
        sweep += [{"run_id": res["run_id"], "label": run.label, "method": res["method"], "r": res.get("r"),
                   "seed": res.get("seed"), "k": kk, "epsilon": e,
                   "count": int(intruder_counts(arr["maxcos"][used], kk, e).sum())} for kk in ks for e in epsilons]
        sv = arr["update_sv"][used].astype(np.float64)
        spectra[res["run_id"]] = np.nanmean(sv / np.maximum(sv[:, :1], 1e-30), axis=0)
        if wandb_mode != "none":
            _log_wandb(run, table, row, wandb_mode)
    summary = pd.DataFrame(rows)
    out_dir.mkdir(parents=True, exist_ok=True)
    summary.to_csv(out_dir / "intruder_summary.csv", index=False)
    (sweep_df := pd.DataFrame(sweep)).to_csv(out_dir / "intruder_sweep.csv", index=False)
    corr = correlations(summary)
    (out_dir / "intruder_correlations.json").write_text(json.dumps({"k": k, "epsilon": epsilon, **corr}, indent=2))
    figures = make_figures(summary, sweep_df, pd.concat(tables, ignore_index=True), spectra, corr, out_dir, k=k, epsilon=epsilon)
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
    args = p.parse_args(argv)
    try:
        if args.k < 1:
            raise ConfigError(f"--k must be a positive integer, got {args.k}")
        epsilons = parse_floats(args.epsilons)
        if not all(0 < e <= 1 for e in [*epsilons, args.epsilon]):
            raise ConfigError("epsilons are |cosine| thresholds: use values in (0, 1], e.g. --epsilons 0.1..0.9")
        ks = [int(x) for x in parse_floats(args.ks)]
        first = Path(args.run_dirs[0]).resolve()
        out = args.out or (first.parent if (first / "result.json").exists() else first) / "intruder-analysis"
        t0 = time.perf_counter()
        figures, summary = intruder_section(args.run_dirs, out, k=args.k, epsilon=args.epsilon, epsilons=epsilons,
                                            ks=ks, device=args.device, recompute=args.recompute, wandb_mode=args.wandb)
    except HarnessError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
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
