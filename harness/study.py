"""`make study`: the study's sweeps from the manifest (conf/study.yaml), in priority order, each followed by the
records copy and its analyses, then the claims ledger. Prints the plan first: every sweep with its run count and
estimated wall time, and the sweeps a cap on the total drops from the bottom.

    python -m harness.study [--scale gpu] [--only fair-classify,intruder] [--cap-hours 16] [--dry-run] [-- ARGS]

Every sweep resumes (the sweeper skips runs already finished), so an interrupted study is restarted with the
same command. Arguments after `--` go to every sweep (e.g. `-- sweep.seeds=5`); `--launcher joblib` picks Hydra's
launcher. The analyses run as their own processes (harness/ never imports analysis/).
"""

from __future__ import annotations

import argparse
import math
import shlex
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from omegaconf import OmegaConf

from harness.config import resumable
from harness.exits import exit_on_error
from harness.errors import ConfigError
from harness.halving import plan_rungs, total_cost
from harness.sweep_plan import sweep_settings

REPO = Path(__file__).resolve().parent.parent
MANIFEST = REPO / "conf" / "study.yaml"
SWEEP_DIR = "sweeps/study"


@dataclass
class SweepPlan:
    name: str
    family: str
    runs: int
    runs_max: int
    minutes_per_run: float
    analyses: list[str] = field(default_factory=list)

    @property
    def hours(self) -> float:
        """Estimated wall time at the run count's upper end (widening included)."""
        return self.runs_max * self.minutes_per_run / 60


def _sweep_file(name: str, folder: Path) -> dict[str, Any]:
    """A sweep file with the sweep files it builds on (`defaults: [intruder]`) merged under it."""
    path = folder / f"{name}.yaml"
    if not path.exists():
        raise ConfigError(f"the manifest names sweep '{name}' but {path} does not exist; fix conf/study.yaml")
    own = OmegaConf.to_container(OmegaConf.load(path), resolve=False)
    merged: dict[str, Any] = {}
    for entry in own.get("defaults") or []:
        if isinstance(entry, str) and (folder / f"{entry}.yaml").exists():
            merged = OmegaConf.to_container(OmegaConf.merge(merged, _sweep_file(entry, folder)))
    return OmegaConf.to_container(OmegaConf.merge(merged, own))


def _values(override: str) -> int:
    """How many values a sweep override names, parsed as Hydra does: `train.lr=1e-3,2e-3,4e-3` -> 3 (a comma
    sweep), `method.lr_grid.values=[1e-3,2e-3]` -> 1 (a list is one value)."""
    from hydra.core.override_parser.overrides_parser import OverridesParser

    if "=" not in str(override):
        return 1
    parsed = OverridesParser.create().parse_override(str(override))
    return len(list(parsed.sweep_string_iterator())) if parsed.is_sweep_override() else 1


def _resumable(variant: list[str]) -> bool:
    """Whether a variant's method (its `method=` override) can pause at halving rungs (conf/method/*.yaml
    `resumable`; AdaLoRA cannot, so its search runs every rate to the full budget)."""
    name = next((str(o).split("=", 1)[1] for o in variant if str(o).startswith("method=")), None)
    path = REPO / "conf" / "method" / f"{name}.yaml"
    return name is None or not path.exists() or resumable(OmegaConf.load(path))


def count_runs(sweep: dict[str, Any]) -> tuple[int, int]:
    """(runs, runs with every widening) of a sweep file, in full-budget runs: grid points x seeds x stages, where
    a variant's grid points are the product of its comma lists (`train.lr=a,b,c`) and of the sweeper's own axes
    (`task.n_train: 256,512`); or with `lr_search` N rates on the search seed plus the other seeds (all seeds with
    a held-out `selection_seed`); with `lr_halving` the N rates cost about two full runs (all N for a method that
    cannot resume)."""
    params = dict(((sweep.get("hydra") or {}).get("sweeper") or {}).get("params") or {})
    sweep = sweep_settings(sweep)
    seed_axis = str(params.pop("seed", ""))
    axes = math.prod(_values(f"{k}={v}") for k, v in params.items())
    points = sum(math.prod(_values(o) for o in v) for v in sweep.get("variants") or [[]]) * axes
    seeds = int(sweep.get("seeds") or 1) if int(sweep.get("seeds") or 1) > 1 else len(seed_axis.split(",")) or 1
    stages = len(sweep.get("stages") or []) or 1
    n, widen = int(sweep.get("lr_search") or 0), int(sweep.get("lr_widen") or 0)
    if n <= 1:
        return points * seeds * stages, points * seeds * stages
    per_variant = n + seeds - (0 if sweep.get("selection_seed") is not None else 1)
    if sweep.get("lr_halving"):  # n runs start, but the search costs about two full-budget runs (harness/halving.py)
        halved = math.ceil(total_cost(plan_rungs(n, 1000), 1000, n))  # a method that cannot resume runs all n
        variants = sweep.get("variants") or [[]]
        runs = axes * sum(math.prod(_values(o) for o in v) * (per_variant - n + (halved if _resumable(v) else n))
                          for v in variants)
        widened = axes * sum(math.prod(_values(o) for o in v) * widen for v in variants if not _resumable(v))
        return runs, runs + widened  # only a full-length search widens
    return points * per_variant, points * (per_variant + widen)


def load_plan(scale: str, manifest: Path = MANIFEST, sweep_dir: Path = REPO / SWEEP_DIR) -> tuple[list[SweepPlan], float, dict]:
    """(the manifest's sweeps in order, the cap in hours, the scale's overrides per family)."""
    spec = OmegaConf.to_container(OmegaConf.load(manifest))
    scales = spec.get("scales") or {}
    if scale not in scales:
        raise ConfigError(f"--scale {scale} is not in {manifest.name}; use one of {', '.join(scales)}")
    plans = []
    for entry in spec["sweeps"]:
        runs, runs_max = count_runs(_sweep_file(entry["name"], sweep_dir))
        plans.append(SweepPlan(entry["name"], entry["family"], runs, runs_max,
                               float(entry["minutes_per_run"][scale]), list(entry.get("analyses") or [])))
    return plans, float(spec["cap_hours"]), scales[scale]


def within_cap(plans: list[SweepPlan], cap_hours: float) -> tuple[list[SweepPlan], list[SweepPlan]]:
    """(the sweeps kept, those dropped from the bottom) so the kept ones' estimated total fits the cap."""
    kept, total = list(plans), sum(p.hours for p in plans)
    dropped: list[SweepPlan] = []
    while kept and total > cap_hours:
        dropped.insert(0, kept.pop())
        total -= dropped[0].hours
    return kept, dropped


def commands(plan: SweepPlan, study: str, overrides: list[str], launcher: str, extra: list[str]) -> list[list[str]]:
    """The sweep, the records copy, then its analyses: each as `python -m module args`."""
    runs, results = f"runs/{study}/{plan.name}", f"results/{study}/{plan.name}"
    py = [sys.executable, "-m"]
    out = [[*py, "analysis.records", "--restore", f"{results}/runs", runs],  # a fresh clone resumes from the records
           [*py, "harness.run", "--multirun", "--config-dir", SWEEP_DIR, "--config-name", plan.name,
            f"hydra/launcher={launcher}", f"paths.runs={runs}", f"paths.shared=runs/{study}", *overrides, *extra],
           [*py, "analysis.records", runs, f"{results}/runs"]]
    out += [[*py, *shlex.split(a.format(runs=runs, results=results))] for a in plan.analyses]
    return out


EARLIER_STUDY = "results/study-2026-12"  # the 2026-12 protocol's records: verdicts for claims not yet run here


def claims_command(study: str, scale: str) -> list[str]:
    """`make claims` for this study: the README shows the CPU study's findings, with the earlier study's verdict
    (marked) where a claim has not been run yet."""
    report = f"results/REPORT{'-gpu' if scale == 'gpu' else ''}.md"
    cpu = [] if scale == "gpu" else ["--readme", "README.md", "--earlier", EARLIER_STUDY]
    return [sys.executable, "-m", "analysis.claims", "--runs", f"results/{study}", "--out",
            f"results/{study}/claims", "--report", report, *cpu]


def print_plan(kept: list[SweepPlan], dropped: list[SweepPlan], cap_hours: float, scale: str) -> None:
    print(f"study plan (scale {scale}; wall times are ESTIMATES: runs x minutes per run, conf/study.yaml)")
    total = 0.0
    for p in kept:
        total += p.hours
        runs = f"{p.runs}" if p.runs == p.runs_max else f"{p.runs}-{p.runs_max}"
        print(f"  {p.name:<18} {p.family:<7} {runs:>6} runs x {p.minutes_per_run:g} min = ~{p.hours:.1f} h "
              f"(cumulative ~{total:.1f} h)")
    for p in dropped:
        print(f"  DROPPED {p.name}: ~{p.hours:.1f} h would pass the {cap_hours:g} h cap")
    print(f"  total ~{total:.1f} h of a {cap_hours:g} h cap", flush=True)


def parse(argv: list[str]) -> tuple[argparse.Namespace, list[str]]:
    extra = argv[argv.index("--") + 1:] if "--" in argv else []
    argv = argv[:argv.index("--")] if "--" in argv else argv
    parser = argparse.ArgumentParser(prog="python -m harness.study", description=__doc__.split("\n\n")[0])
    parser.add_argument("--scale", default="cpu", help="cpu (the sweep files' models) or gpu (larger presets)")
    parser.add_argument("--only", default="", help="comma- or space-separated sweep names, run in manifest order")
    parser.add_argument("--cap-hours", type=float, default=None, help="override the manifest's cap")
    parser.add_argument("--launcher", default="basic", help="Hydra launcher: basic, joblib, submitit_slurm, ...")
    parser.add_argument("--dry-run", action="store_true", help="print the plan and the commands; run nothing")
    parser.add_argument("--manifest", type=Path, default=MANIFEST)
    return parser.parse_args(argv), extra


def main(argv: list[str] | None = None) -> int:
    args, extra = parse(sys.argv[1:] if argv is None else argv)
    with exit_on_error():
        plans, cap, scale_overrides = load_plan(args.scale, args.manifest)
        only = [s for s in args.only.replace(",", " ").split() if s]
        unknown = sorted(set(only) - {p.name for p in plans})
        if unknown:
            raise ConfigError(f"--only names {', '.join(unknown)}, not in the manifest; use "
                              f"{', '.join(p.name for p in plans)}")
        plans = [p for p in plans if not only or p.name in only]
        kept, dropped = within_cap(plans, cap if args.cap_hours is None else args.cap_hours)
    study = "study" + ("-gpu" if args.scale == "gpu" else "")
    print_plan(kept, dropped, cap if args.cap_hours is None else args.cap_hours, args.scale)
    steps = [c for p in kept for c in commands(p, study, scale_overrides.get(p.family, []), args.launcher, extra)]
    steps.append(claims_command(study, args.scale))
    if not args.dry_run:
        from harness.provenance import warn_if_dirty

        warn_if_dirty("the study")
    for step in steps:
        shown = shlex.join(["python", *step[1:]])
        print(("would run: " if args.dry_run else "+ ") + shown, flush=True)
        if not args.dry_run:
            done = subprocess.run(step, cwd=REPO)
            if done.returncode != 0:
                print(f"study: stopped: `{shown}` exited {done.returncode}; rerun the same command to resume",
                      file=sys.stderr)
                return done.returncode
    return 0


if __name__ == "__main__":
    sys.exit(main())
