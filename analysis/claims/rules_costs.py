"""Claims 10-15: what PEFT costs and what it changes inside the model (trainable parameters, intruder dimensions,
inference latency, adapter merging, training memory, an exact parameter count). Rules a machine applies to the
records, the intruder tables, the serving and merge benchmarks and the estimator; registered in the ledger by
analysis/claims/rules.py, beside the quality claims 1-9 there. Each rule is its function's docstring."""

from __future__ import annotations

import math

import pandas as pd

from analysis.claims.rules import claim
from analysis.claims.verdicts import INCONCLUSIVE, REFUTED, SUPPORTED, Evidence, Verdict, fmt_gain, scope


@claim(10, "IA3 trains far fewer parameters than LoRA.")
def claim_10(ev: Evidence, v: Verdict) -> Verdict:
    """Measured trainable parameters of IA3 against LoRA r=16 (same cell and targets where there is one, else
    the estimator on Llama-3.1-8B): supported when IA3 trains < 10% of LoRA's, refuted when >= 50%. Its
    gain retention is listed beside it: what the saving costs."""
    fair = ev.fair()
    rows = []
    for _, ia3 in fair[fair["method"] == "ia3"].iterrows():
        lora = ev.runs[(ev.runs["cell"] == ia3["cell"]) & (ev.runs["method"] == "lora") & (ev.runs["r"] == 16)]
        mine = ev.runs[(ev.runs["cell"] == ia3["cell"]) & (ev.runs["variant"] == ia3["variant"])]
        if not lora.empty and not mine.empty:
            rows.append((ia3, float(mine["params_trainable"].iloc[0]) / float(lora["params_trainable"].iloc[0])))
    if not rows and {"ia3", "lora"} <= set(ev.estimates):
        rows.append((None, ev.estimates["ia3"]["params_trainable"] / ev.estimates["lora"]["params_trainable"]))
    if not rows:
        v.missing = "IA3 and LoRA r=16 runs in one cell (or the estimator)"
        return v
    for row, share in rows:
        where = f"{row['task']}/{row['model']} (measured)" if row is not None else "Llama-3.1-8B (estimator)"
        v.evidence.append(f"{where}: IA3 trains {100 * share:.2f}% of LoRA r=16's parameters"
                          + (f"; {fmt_gain(row)}" if row is not None else ""))
    worst = max(share for _, share in rows)
    v.estimate = f"IA3 / LoRA r=16 trainable parameters: at most {100 * worst:.2f}%"
    v.verdict = SUPPORTED if worst < 0.10 else REFUTED if worst >= 0.5 else INCONCLUSIVE
    measured = pd.DataFrame([row for row, _ in rows if row is not None])
    v.scope = scope(measured) if not measured.empty else "estimator: Llama-3.1-8B architecture (no training)"
    return v




@claim(11, "LoRA introduces intruder dimensions that full fine-tuning does not, fewer at higher rank, and they go "
           "with forgetting.")
def claim_11(ev: Evidence, v: Verdict) -> Verdict:
    """Three parts from the intruder analysis over the most runs (k=10, epsilon 0.5): (a) the lowest-rank LoRA
    group's (its best-replicated learning rate) mean intruder count per run, with an exact Poisson interval
    (Garwood, widened for over-dispersion; never below 0; analysis/exact.py), lies above full FT's; (b) Spearman's
    rho of rank vs intruders over LoRA runs < 0 with permutation p < 0.05; (c) rho of intruders vs forgetting > 0
    with permutation p < 0.05 (exact over all pairings up to 8 runs) for every base model, each from the analysis
    holding the most of its runs (the encoder's probe and the causal LM's general-English loss are separate
    scales; the causal-LM arm is the paper's measure); where the runs' ties cannot reach p < 0.05 the row says so
    and how many runs it would need. Supported when all three hold; refuted when (a) fails with intervals apart
    the other way, (b)'s rho > 0 with p < 0.05, or a model's (c) rho < 0 with p < 0.05; otherwise inconclusive."""
    from analysis.exact import describe_rank_test, rank_test
    from analysis.intruder.evidence import count_group, link_test, one_per_config

    groups, summary, corr = ev.intruder_groups, ev.intruder_summary, ev.intruder_correlations
    if groups is None or summary is None or corr is None:
        v.missing = "an intruder analysis (python -m analysis.intruder ... --out) under --runs"
        return v
    lora, full = groups[groups["method"] == "lora"], groups[groups["method"] == "full"]
    if lora.empty or full.empty:
        v.missing = "LoRA and full-FT groups in the intruder analysis"
        return v
    lowest = lora[lora["r"] == lora["r"].min()]
    low = count_group(summary, lowest.sort_values("n_seeds", ascending=False, kind="stable").iloc[0])
    f = count_group(summary, full.sort_values("n_seeds", ascending=False, kind="stable").iloc[0])
    part_a, against_a = low["low"] > f["high"], low["high"] < f["low"]
    runs = one_per_config(summary[summary["method"] == "lora"])
    rank = rank_test(runs["r"], runs["intruders"])
    links = [(link, link_test(link)) for link in ev.forgetting_links or [(corr.get("forgetting") or {}) | {"model": "all runs"}]]
    v.evidence = [f"analysis: {corr.get('source', 'intruder analysis')}",
                  f"(a) {low['label']}: {low['text']} intruders per run vs {f['label']}: {f['text']} "
                  "(exact Poisson 95% intervals)",
                  f"(b) rank vs intruders over {len(runs)} LoRA runs: {describe_rank_test(rank)}"] + [
        f"(c) {link['model']}: intruders vs forgetting: {describe_rank_test(test)}"
        + (f" ({link['source']})" if link.get("source") else "") for link, test in links]
    v.estimate = f"(a) {'yes' if part_a else 'no'}, (b) rho {rank['rho']:+.2f}, (c) " + ", ".join(
        f"{link['model']} rho {test['rho']:+.2f}" + (" (too few runs)" if test["p_min"] >= 0.05 else "")
        for link, test in links)
    part_c = all(test["rho"] > 0 and test["p"] < 0.05 for _, test in links)
    against_c = any(test["rho"] < 0 and test["p"] < 0.05 for _, test in links)
    holds = [part_a, rank["rho"] < 0 and rank["p"] < 0.05, part_c]
    against = [against_a, rank["rho"] > 0 and rank["p"] < 0.05, against_c]
    v.verdict = REFUTED if any(against) else SUPPORTED if all(holds) else INCONCLUSIVE
    return v


@claim(12, "A merged adapter adds zero inference latency; an unmerged one adds a small overhead.")
def claim_12(ev: Evidence, v: Verdict) -> Verdict:
    """From serve_bench (wall time of a generation request; every mode runs once per round, back to back): per
    batch size the ratio merged / base and unmerged / merged within each round, with a 95% t-interval over the
    rounds (on log ratios; analysis/claims/latency.py). Supported when every merged / base upper bound is <= 1.05 (within
    5% of the base) and every unmerged / merged upper bound <= 1.25; refuted when a merged / base lower bound is
    > 1.10; otherwise inconclusive. A record without per-round samples (an old file) is listed, not counted."""
    from analysis.claims.latency import describe, round_ratios

    if not ev.serve:
        v.missing = "serve_bench.json records (python -m harness.adapters.serve_bench <run> --out ...)"
        return v
    rows = [row for rec in ev.serve for row in round_ratios(rec)]
    if not rows:
        v.missing = "serve_bench records with base, merged and unmerged modes"
        return v
    v.evidence = [describe(row) for row in rows]
    paired = [row for row in rows if row["rounds"] >= 2]
    if not paired:
        v.missing = "per-round timings (samples_full_s): these serve_bench records have no per-round data"
        return v
    worst_merged = max(paired, key=lambda row: row["merged_vs_base_high"])
    worst_unmerged = max(paired, key=lambda row: row["unmerged_vs_merged_high"])
    v.estimate = (f"largest upper bounds: merged {100 * (worst_merged['merged_vs_base_high'] - 1):+.1f}% vs base "
                  f"(batch {worst_merged['batch']}), unmerged {100 * (worst_unmerged['unmerged_vs_merged_high'] - 1):+.1f}%"
                  f" vs merged (batch {worst_unmerged['batch']})")
    refuted = any(row["merged_vs_base_low"] > 1.10 for row in paired)
    supported = all(row["merged_vs_base_high"] <= 1.05 and row["unmerged_vs_merged_high"] <= 1.25 for row in paired)
    v.verdict = REFUTED if refuted else SUPPORTED if supported else INCONCLUSIVE
    return v


@claim(13, "Merging task adapters with TIES or DARE degrades only slightly against the individual adapters.")
def claim_13(ev: Evidence, v: Verdict) -> Verdict:
    """From merge tables made by `merge --select` (weight and density chosen on validation, scored on test): mean
    retention of the TIES / DARE merges against the individual adapters; supported when every one is >= 90%,
    refuted when one is < 75%, else inconclusive. The untuned base and the union adapter are shown beside them. A
    table whose weights were fixed by hand (no validation choice) is listed, not judged."""
    values = []
    for table in ev.merges:
        chosen = bool(table.get("selection"))
        mean = table.get("mean") or {}
        for name, share in (mean.get("retention") or {}).items():
            if name.startswith(("ties", "dare")) and not name.endswith("_factors") and share is not None:
                if chosen:
                    values.append(share)
                v.evidence.append(f"{table.get('name', 'merge')}: {name} {100 * share:.1f}%"
                                  + ("" if chosen else " (not judged: weights fixed by hand, not chosen on validation)"))
        if mean.get("own"):
            v.evidence.append(f"{table.get('name', 'merge')}: untuned base {100 * (mean.get('base') or 0) / mean['own']:.1f}% "
                              f"of the own adapters, union adapter "
                              + (f"{100 * mean['retention']['union']:.1f}%" if (mean.get("retention") or {}).get("union") is not None else "not run"))
    if not values:
        v.missing = ("a merge table chosen on validation: make sweep TASK=merge, then per seed "
                     "python -m harness.adapters.merge ... --select (results/study/budget/merge.md)")
        return v
    v.estimate = f"mean retention {100 * min(values):.1f}-{100 * max(values):.1f}%"
    v.verdict = SUPPORTED if min(values) >= 0.90 else REFUTED if min(values) < 0.75 else INCONCLUSIVE
    v.scope = "; ".join(f"{t.get('name', 'merge')}: {len(t.get('runs') or [])} adapters, {t.get('n_test') or t.get('n_eval')} "
                        "test rows per task, weight and density chosen on validation" for t in ev.merges if t.get("selection"))
    return v


@claim(14, "A 7B model needs ~70 GB for full FT (FP16), ~28 GB for LoRA r=16, ~10-14 GB for QLoRA; 70B full FT "
           "needs over 1 TB.")
def claim_14(ev: Evidence, v: Verdict) -> Verdict:
    """The estimator (CUDA; estimated, not measured) at the workload the quoted figures assume (the QLoRA paper's:
    batch 1 x 512 tokens, gradient checkpointing; QLoRA with paged AdamW 8-bit; analysis/claims/memory.py) for
    Llama-2-7B pure-bf16 full FT, LoRA r=16 q,v, QLoRA r=16 q,v and Llama-3.1-70B mixed-precision full FT, each
    row's workload stated beside it: supported when every prediction lies within 25% of the quoted figure (the
    range's ends for QLoRA), refuted when one is off by more than 50%. The memory frontier (largest batch x length
    per 12 / 24 / 80 GiB) is written beside the ledger."""
    from analysis.claims.memory import CLAIM_14, workload

    if not all(k in ev.estimates for k in CLAIM_14):
        v.missing = "estimator rows " + ", ".join(k for k in CLAIM_14 if k not in ev.estimates)
        return v
    errors = []
    for key, (_, (low, high)) in CLAIM_14.items():
        est = ev.estimates[key]
        gb = est["memory"]["peak"] / 1e9
        off = 0.0 if low <= gb <= high else (gb / low - 1 if gb < low else gb / high - 1)
        errors.append(abs(off))
        quoted = f"over {low:g}" if math.isinf(high) else f"{low:g}" + (f"-{high:g}" if high != low else "")
        v.evidence.append(f"{key}: {gb:.1f} GB estimated vs quoted {quoted} GB ({100 * off:+.0f}%) at {workload(est)}")
    v.estimate = f"largest miss {100 * max(errors):.0f}%"
    v.verdict = SUPPORTED if max(errors) <= 0.25 else REFUTED if max(errors) > 0.5 else INCONCLUSIVE
    return v


@claim(15, "LoRA r=16 on q,v of Llama-3.1-8B trains 6,815,744 parameters (< 0.1%).")
def claim_15(ev: Evidence, v: Verdict) -> Verdict:
    """peft's trainable count on Llama-3.1-8B's architecture (the estimator builds it on the meta device):
    supported when it equals 6,815,744 and is < 0.1% of the total, refuted otherwise."""
    est = ev.estimates.get("lora")
    if not est:
        v.missing = "the estimator's Llama-3.1-8B LoRA r=16 q,v row"
        return v
    n, pct = est["params_trainable"], est["trainable_pct"]
    v.estimate = f"{n:,} trainable = {pct:.3f}% of {est['params_total']:,}"
    v.evidence = ["harness.estimate model=llama-3.1-8b method=lora r=16 targets=qv"]
    v.verdict = SUPPORTED if n == 6_815_744 and pct < 0.1 else REFUTED
    v.scope = "estimator: Llama-3.1-8B architecture on the meta device (no training)"
    return v
