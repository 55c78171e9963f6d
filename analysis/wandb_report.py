"""A W&B Report for one sweep group, built with the `wandb-workspaces` reports API: parallel coordinates over
method / rank / targets -> score, score vs peak memory, bar charts of saved size and tokens/s, and the claims
ledger and retention-with-interval tables that `analysis.claims --wandb-project` logs into the group.

    python -m analysis.wandb_report --project peft-harness --group classify     # publish (needs `wandb login`)
    python -m analysis.wandb_report --project peft-harness --group classify --offline   # only write the definition
    python -m analysis.wandb_report --publish reports/classify/wandb_report.json        # publish a written one later

Without a login (or offline, or when W&B cannot be reached) it writes the report definition, the JSON of
`Report._to_model()`, to `--out` (default reports/<group>/wandb_report.json) and prints how to publish it;
it never fails for lack of a login.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from typing import Any

from harness.exits import error
from harness.errors import ConfigError, HarnessError
from harness.tracking import has_credentials

DEFINITION = "wandb_report.json"
# The run keys the panels read: config keys as harness.tracking logs them (the effective config), summary keys
# from result.json.
METHOD, RANK, TARGETS = "method.name", "r", "targets.name"


def build_report(project: str, group: str | None, entity: str = "", title: str | None = None,
                 with_project: bool = True) -> Any:
    """The Report object. `with_project=False` leaves the run set's entity/project empty: resolving a project
    needs the W&B API, and the definition written offline gets them when it is published."""
    import wandb_workspaces.reports.v2 as wr
    from wandb_workspaces import expr

    runset = wr.Runset(entity=entity if with_project else "", project=project if with_project else "",
                       name=group or project, filters=[expr.Metric("Group") == group] if group else "")
    score, memory = wr.SummaryMetric("score"), wr.SummaryMetric("peak_mem_bytes")
    by_variant = dict(groupby=wr.Config(METHOD), groupby_aggfunc="mean", groupby_rangefunc="stderr")
    panels = [
        wr.ParallelCoordinatesPlot(title="method / rank / targets -> score", columns=[
            wr.ParallelCoordinatesPlotColumn(wr.Config(METHOD), display_name="method"),
            wr.ParallelCoordinatesPlotColumn(wr.Config(RANK), display_name="rank r", log=True),
            wr.ParallelCoordinatesPlotColumn(wr.Config(TARGETS), display_name="targets"),
            wr.ParallelCoordinatesPlotColumn(wr.SummaryMetric("peak_mem_bytes"), display_name="peak memory (bytes)"),
            wr.ParallelCoordinatesPlotColumn(score, display_name="score"),
        ], layout=wr.Layout(x=0, y=0, w=24, h=9)),
        wr.ScatterPlot(title="score vs peak memory (bytes)", x=memory, y=score, layout=wr.Layout(x=0, y=9, w=12, h=9)),
        wr.ScatterPlot(title="score vs trainable parameters (%)", x=wr.SummaryMetric("trainable_pct"), y=score,
                       log_x=True, layout=wr.Layout(x=12, y=9, w=12, h=9)),
        wr.BarPlot(title="saved size on disk (bytes) per method", metrics=[wr.SummaryMetric("adapter_bytes")],
                   title_x="bytes", layout=wr.Layout(x=0, y=18, w=12, h=8), **by_variant),
        wr.BarPlot(title="training throughput (tokens/s) per method", metrics=[wr.SummaryMetric("train_tokens_per_s")],
                   title_x="tokens/s", layout=wr.Layout(x=12, y=18, w=12, h=8), **by_variant),
    ]
    where = f"group `{group}` of project `{project}`" if group else f"project `{project}`"
    return wr.Report(
        project=project, entity=entity, title=title or f"PEFT vs full fine-tuning: {group or project}",
        description="Quality, memory and cost of each fine-tuning method (harness runs).",
        blocks=[
            wr.H1("Method, rank and targets against score, memory and cost"),
            wr.P(f"Runs of {where}. Score is each run's primary task metric on the held-out split; peak memory is "
                 "the run's measured peak during training (GPU: PyTorch peak allocated; CPU: peak resident memory). "
                 "The retention tables with confidence intervals are in `python -m analysis.report`."),
            wr.PanelGrid(runsets=[runset], panels=panels),
            wr.H1("Claims ledger and retention with intervals"),
            wr.P("Logged by `python -m analysis.claims --wandb-project ... --wandb-group ...` (the study's group): each "
                 "claim's verdict under its stated rule, and each variant's retention vs full FT at its "
                 "validation-selected learning rate with a 95% Fieller interval."),
            wr.PanelGrid(runsets=[runset], panels=[
                wr.WeavePanelSummaryTable(table_name="claims_ledger", layout=wr.Layout(x=0, y=0, w=24, h=12)),
                wr.WeavePanelSummaryTable(table_name="retention", layout=wr.Layout(x=0, y=12, w=24, h=10)),
            ]),
        ],
    )


def definition(report: Any) -> dict[str, Any]:
    """The report's JSON definition (what W&B stores), readable back with `load_definition`."""
    return report._to_model().model_dump(by_alias=True, exclude_none=True, mode="json")


def load_definition(path: Path) -> Any:
    """A written definition -> a Report object."""
    import wandb_workspaces.reports.v2 as wr
    from wandb_workspaces.reports.v2 import internal

    try:
        data = json.loads(Path(path).read_text())
    except (OSError, json.JSONDecodeError) as err:
        raise ConfigError(f"cannot read the report definition {path} ({err}); write it with "
                          "`python -m analysis.wandb_report --project P --group G --offline`") from None
    return wr.Report._from_model(internal.ReportViewspec.model_validate(data))


def publish(report: Any, project: str, entity: str | None) -> str:
    """Save the report to W&B (needs a login); the run sets point at `entity/project`. Returns its URL."""
    import wandb
    import wandb_workspaces.reports.v2 as wr

    entity = entity or wandb.Api(timeout=60).default_entity
    report.entity, report.project = entity, project
    for block in report.blocks:
        if isinstance(block, wr.PanelGrid):
            for runset in block.runsets:
                runset.entity, runset.project = entity, project
    report.save()
    return report.url


def write_definition(report: Any, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(definition(report), indent=2) + "\n")
    return path


def online_possible(offline_flag: bool) -> tuple[bool, str]:
    """(can try to publish, why not)."""
    if offline_flag:
        return False, "--offline"
    if os.environ.get("WANDB_MODE") in ("offline", "disabled", "dryrun"):
        return False, f"WANDB_MODE={os.environ['WANDB_MODE']}"
    if not has_credentials():
        return False, "not logged in to W&B"
    return True, ""


def run(project: str | None, group: str | None, entity: str | None, out: Path | None, title: str | None,
        offline: bool, publish_file: Path | None) -> int:
    ok, why = online_possible(offline)
    if publish_file is not None:
        report = load_definition(publish_file)
        if not ok:
            raise ConfigError(f"cannot publish {publish_file}: {why}; run `wandb login` (or set WANDB_API_KEY) first")
        print(f"published: {publish(report, project or report.project, entity or report.entity or None)}")
        return 0
    if not project:
        raise ConfigError("--project is required, e.g. --project peft-harness --group classify")
    path = Path(out) if out else Path("reports") / (group or project) / DEFINITION
    if ok:
        try:
            report = build_report(project, group, entity or "", title, with_project=False)
            print(f"published: {publish(report, project, entity)}")
            return 0
        except Exception as err:  # noqa: BLE001 - no network, wrong entity, expired key: keep the definition
            why = f"publishing failed ({type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''})"
    report = build_report(project, group, entity or os.environ.get("WANDB_ENTITY", ""), title, with_project=False)
    write_definition(report, path)
    print(f"W&B report not published ({why}); wrote its definition to {path}\n"
          f"to publish: `wandb login` (or set WANDB_API_KEY), then\n"
          f"  python -m analysis.wandb_report --publish {path} --project {project}"
          + (f" --entity {entity}" if entity else "")
          + f"\nor re-run: python -m analysis.wandb_report --project {project}" + (f" --group {group}" if group else ""))
    return 0


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m analysis.wandb_report", description=__doc__.split("\n\n")[0])
    p.add_argument("--project", help="W&B project the runs were logged to (tracking.project)")
    p.add_argument("--group", help="sweep group (the sweep file's `group`)")
    p.add_argument("--entity", help="W&B entity (default: your default entity)")
    p.add_argument("--title", help="report title")
    p.add_argument("--out", type=Path, help=f"where the definition goes offline (default reports/<group>/{DEFINITION})")
    p.add_argument("--offline", action="store_true", help="only write the definition, do not publish")
    p.add_argument("--publish", type=Path, metavar="DEFINITION", help="publish a definition written earlier")
    args = p.parse_args(argv)
    try:
        return run(args.project, args.group, args.entity, args.out, args.title, args.offline, args.publish)
    except HarnessError as err:
        return error(err)


if __name__ == "__main__":
    sys.exit(main())
