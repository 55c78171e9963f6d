"""The intruder paper's causal test (arXiv:2410.21228, Section 6): scale each tuned matrix's intruder directions
down and measure what that costs in task score and saves in forgetting.

For every matrix the run changed, W = sum_i s_i u_i v_i^T; each of the top-k u_i whose max |cos| against the
pre-trained W0's left singular vectors is below epsilon is an intruder, and its term is scaled by lambda, the
fraction kept: W' = W + (lambda - 1) s_i u_i v_i^T (lambda = 1 is the run itself). This is the operation of peft's
`reduce_intruder_dimension` (peft.tuners.lora.intruders, whose lambda is also the fraction kept), applied to the
merged weight in float32 rather than re-factored into a new rank-r adapter: that re-factoring truncates W' - W0 to
rank r, and its new adapter starts from a fresh copy of `modules_to_save` (a classifier's trained head would be
lost). Every lambda is scored by the task's own scorer on the validation and test splits and by the forgetting
probe of harness/forgetting.py, all with the float32 merged model, so the lambda = 1 row can differ from the run's
record (scored at its training precision) by rounding.

    python -m analysis.intruder runs/intruder --scale-intruders 0.3,0.5,0.7,1.0 --out reports/intruder
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pandas as pd
import torch

log = logging.getLogger("analysis.intruder")


def intruder_directions(u0: torch.Tensor, w: torch.Tensor, k: int, epsilon: float):
    """(U, S, Vh, indices) of W's SVD and which of its top-k left singular vectors are intruders against U0."""
    u, s, vh = torch.linalg.svd(w.float(), full_matrices=False)
    top = min(k, s.numel())
    cos = (u[:, :top].T @ u0.to(u)).abs().amax(-1)
    return u, s, vh, torch.nonzero(cos < epsilon).flatten()


def scale_intruders(u0: torch.Tensor, w: torch.Tensor, k: int = 10, epsilon: float = 0.5,
                    lam: float = 0.5) -> tuple[torch.Tensor, int]:
    """W with each intruder direction's singular value multiplied by `lam`, and how many directions that was."""
    u, s, vh, idx = intruder_directions(u0, w, k, epsilon)
    if idx.numel() == 0:
        return w.float().clone(), 0
    return w.float() + (lam - 1.0) * (u[:, idx] * s[idx]) @ vh[idx], int(idx.numel())


def scaling_rows(run_dir: Path, lambdas: Sequence[float], k: int, epsilon: float, label: str,
                 device: torch.device, only: set[str] | None = None) -> list[dict[str, Any]]:
    """One row per lambda for one run folder: directions scaled, intruders left, scores and forgetting. `only`
    restricts the scaling to those matrices (full FT: the ones the LoRA runs of its model changed, as counted)."""
    from analysis.intruder.weights import tuned_model
    from analysis.intruder.svd import pretrained_bases
    from harness.forgetting import probe_loss, probe_sample, sentence_embeddings, similarity_forgetting
    from harness.runfolder import open_run
    from harness.tasks import get_task

    trained = open_run(run_dir, finished=True)
    base, tokenizer, _ = trained.load_base(dequantize=True)
    kind, train = trained.model_cfg.kind, trained.eff["train"]
    task = get_task(trained.task_cfg, trained.cache)
    data = task.splits()
    probe = probe_sample()
    base = base.float()  # bf16 values are exact in float32: the same W0, scored without rounding
    if kind == "encoder":
        before: Any = sentence_embeddings(base, tokenizer, probe, train["eval_batch_size"])
    else:
        before = probe_loss(base, tokenizer, probe, train["eval_batch_size"])
    w0 = {n: m.weight.detach().clone() for n, m in base.named_modules() if isinstance(m, torch.nn.Linear)}
    model, names = tuned_model(trained, base)
    names = [n for n in names if only is None or n in only]
    w0 = {n: w0[n] for n in names}
    fingerprint = trained.result.get("model_fingerprint")
    dtype = str(next(iter(w0.values())).dtype).removeprefix("torch.")
    cache = trained.cache / "svd" / trained.result["model"] / f"{fingerprint}-{dtype}" if fingerprint else None
    bases = pretrained_bases(w0, device, cache)
    originals = {n: model.get_submodule(n).weight.detach().clone() for n in names}

    def score(split) -> float:
        outputs = task.predict(model, tokenizer, split, kind, train["eval_batch_size"], train["max_seq_len"])
        return task.score(outputs, list(split))[task.primary_metric]

    rows = []
    for lam in sorted(set(lambdas) | {1.0}, reverse=True):
        t0 = time.perf_counter()
        scaled = left = 0
        with torch.no_grad():
            for n in names:
                new, count = scale_intruders(bases[n], originals[n], k, epsilon, lam)
                model.get_submodule(n).weight.copy_(new.to(originals[n].dtype))
                scaled += count
                _, _, _, idx = intruder_directions(bases[n], new, k, epsilon)
                left += int(idx.numel())
        if kind == "encoder":
            forgetting = similarity_forgetting(before, sentence_embeddings(model, tokenizer, probe, train["eval_batch_size"]))["forgetting"]
        else:
            forgetting = probe_loss(model, tokenizer, probe, train["eval_batch_size"]) - before
        rows.append({"run_id": trained.name, "label": label, "seed": trained.result.get("seed"), "lambda": lam,
                     "directions_scaled": scaled, "intruders_left": left, "val_score": score(data["validation"]),
                     "score": score(data["test"]), "forgetting": forgetting, "seconds": time.perf_counter() - t0})
        log.info("%s lambda=%g: %d directions scaled, %d intruders left, val %.4f, forgetting %.4g",
                 trained.name, lam, scaled, left, rows[-1]["val_score"], forgetting)
        if scaled == 0:  # no intruder: every lambda is the run itself
            break
    unscaled = rows[0]
    for row in rows:
        row |= {"d_val_score": row["val_score"] - unscaled["val_score"], "d_score": row["score"] - unscaled["score"],
                "forgetting_change_pct": 100.0 * (row["forgetting"] - unscaled["forgetting"]) / unscaled["forgetting"]
                if unscaled["forgetting"] else float("nan")}
    return rows


def scaling_groups(table: pd.DataFrame) -> pd.DataFrame:
    """Per label and lambda: means and 95% t-intervals over seeds of the changes against the unscaled run."""
    from analysis.tables import t_interval

    rows = []
    for (label, lam), part in table.groupby(["label", "lambda"], sort=False):
        row = {"label": label, "lambda": lam, "n_seeds": len(part)}
        for col in ("intruders_left", "val_score", "score", "forgetting", "d_score", "forgetting_change_pct"):
            mean, low, high = t_interval(part[col].astype(float))
            row |= {f"{col}_mean": mean, f"{col}_low": low, f"{col}_high": high}
        rows.append(row)
    return pd.DataFrame(rows)


def scaling_section(runs, lambdas: Sequence[float], out_dir: Path, *, k: int, epsilon: float,
                    device: torch.device, with_intruders: set[str]) -> list[Path]:
    """`intruder_scaling.csv` (per run and lambda), `intruder_scaling_groups.csv` and its figure in out_dir.
    Runs without an intruder at (k, epsilon) get their lambda = 1 row only (scaling changes nothing)."""
    from analysis.intruder.plots import plot_scaling

    rows: list[dict[str, Any]] = []
    for run in runs:
        todo = lambdas if run.result["run_id"] in with_intruders else [1.0]
        counted = pd.read_csv(run.path / "intruders.csv")  # written by intruder_section for these k, epsilon
        only = set(counted.loc[counted["compared"], "module"])
        rows += scaling_rows(run.path, todo, k, epsilon, run.label, device, only)
    table = pd.DataFrame(rows)
    table.to_csv(out_dir / "intruder_scaling.csv", index=False)
    groups = scaling_groups(table)
    groups.to_csv(out_dir / "intruder_scaling_groups.csv", index=False)
    return [plot_scaling(groups, out_dir, k, epsilon)]
