"""results/FINDINGS.md: the short page of what the study found, one source for every number quoted elsewhere.

Built by `make claims` from the same Evidence and verdicts as the ledger (analysis/claims/report.py): per claim its
verdict, estimate (with its interval where the rule has one), scope (what the evidence covers) and a link to its
ledger row. The page's first lines (at most `SUMMARY_LINES`) stand alone: the README shows them between
`<!-- findings:begin -->` and `<!-- findings:end -->` (`update_readme_block`)."""

from __future__ import annotations

import os
import re
from collections.abc import Sequence
from pathlib import Path

from analysis.claims.rules import ABOVE_RANGE, NOT_RUN, REFUTED, SUPPORTED, Evidence, Verdict
from analysis.claims.verdicts import LABELS, SHOWN, counts_line

SUMMARY_LINES = 10
FINDINGS_NAME = "FINDINGS.md"
BEGIN, END = "<!-- findings:begin -->", "<!-- findings:end -->"
SHORT = 70  # characters of a claim's text in the summary lines
EVIDENCE_LINES = 5  # evidence lines per claim on the page (the ledger has them all)
SETUP = re.compile(r"^([\w-]+/[\w.-]+)[ :]")


def _short(text: str) -> str:
    text = text.rstrip(".")
    return text if len(text) <= SHORT else text[:SHORT].rsplit(" ", 1)[0] + "..."


def scope(ev: Evidence, v: Verdict) -> str:
    """What the evidence behind a verdict covers, read off the evidence itself."""
    if v.verdict == NOT_RUN:
        return f"not measured; needs {v.missing}"
    if v.claim <= 10:
        # the rows a score rule used start with their task/model (analysis.claims.rules `_ret` and `compare`)
        where = ", ".join(sorted({m.group(1) for e in v.evidence if (m := SETUP.match(e))}))
        source = "measured, fair rows (>= 3 seeds, >= 2 learning rates)"
        if v.claim == 10 and any("estimator" in e for e in v.evidence):
            source = "estimator (Llama-3.1-8B), not measured"
        return f"{source}; task/model: {where}" if where else source
    if v.claim == 11:
        models = ", ".join(link["model"] for link in ev.forgetting_links) or "one analysis"
        return f"measured intruder analyses (k=10, epsilon 0.5) on {models}; small models, CPU-scale runs"
    if v.claim == 12:
        recs = [f"{r.get('model')} on {r.get('device')} ({r.get('threads')} threads)" for r in ev.serve]
        return "measured generation latency: " + "; ".join(dict.fromkeys(recs))
    if v.claim == 13:
        return "measured merges: " + ", ".join(dict.fromkeys(str(m.get("name")) for m in ev.merges))
    if v.claim in (14, 15):
        return "estimated by harness.estimate (meta-device models), not measured"
    # claims 16-21 are measured: their rules fill `scope` where they name it, else the evidence names the cells
    return v.scope or "measured on small models (CPU-scale runs); the cells are named in the evidence"


def findings_markdown(ev: Evidence, verdicts: Sequence[Verdict], roots: Sequence[Path], ledger_link: str) -> str:
    """The page: a self-contained summary (<= SUMMARY_LINES lines), then a few lines per claim."""
    by = {k: [v for v in verdicts if v.verdict == k] for k in LABELS}
    head = [f"# Findings ({len(verdicts)} claims about PEFT vs full fine-tuning; rebuilt by `make claims` from "
            f"{', '.join(map(str, roots))})",
            counts_line(verdicts, every=False) + ". Measured on small models (CPU scale) unless a "
            "claim says estimated; each verdict's rule and evidence: the ledger."]
    for kind, vs in by.items():
        if vs:  # a verdict's headline number beside its claim, where the rule gave one
            head.append(f"- **{SHOWN.get(kind, kind)}**: " + "; ".join(
                f"{v.claim}. {_short(v.text)}" + (f" ({v.estimate})" if v.estimate and kind in (SUPPORTED, ABOVE_RANGE, REFUTED) else "")
                + (f" [{v.earlier}]" if v.earlier else "")
                for v in vs))
    head += [f"Ledger: [{ledger_link}]({ledger_link}); per claim below."]
    if len(head) > SUMMARY_LINES:  # never: at most six verdict kinds + three fixed lines
        raise AssertionError("the findings summary outgrew its lines")
    lines = head + [""]
    frontier = str(Path(ledger_link).parent / "memory_frontier.md")  # written beside the ledger
    for v in verdicts:
        lines += [f"## {v.claim}. {v.text}", "",
                  f"**{SHOWN.get(v.verdict, v.verdict)}**" + (f" ({v.earlier})" if v.earlier else "")
                  + (f": {v.estimate}" if v.estimate else ""),
                  f"- scope: {getattr(v, 'scope', '') or scope(ev, v)}",
                  *[f"- {line}" for line in v.evidence[:EVIDENCE_LINES]],
                  *([f"- ... {len(v.evidence) - EVIDENCE_LINES} more in the ledger"] if len(v.evidence) > EVIDENCE_LINES else []),
                  *([f"- memory frontier (largest batch x length in 12 / 24 / 80 GiB, estimated): [{frontier}]({frontier})"]
                    if v.claim == 14 and ev.memory_frontier else []),
                  f"- ledger row: [{ledger_link}#claim-{v.claim}]({ledger_link}#claim-{v.claim})", ""]
    return "\n".join(lines)


def summary_block(findings: str) -> str:
    """The page's summary lines (up to the first per-claim section)."""
    head = findings.split("\n## ", 1)[0].rstrip("\n").splitlines()
    return "\n".join(head[:SUMMARY_LINES])


def readme_summary(findings: str) -> str:
    """The summary as the README shows it: its title line in bold instead of a second top-level heading, and
    "per claim below" pointing at the page itself."""
    lines = summary_block(findings).splitlines()
    if lines and lines[0].startswith("# "):
        lines[0] = f"**{lines[0][2:]}**"
    return "\n".join(lines).replace("; per claim below.", f"; per claim: [{FINDINGS_NAME}]({FINDINGS_NAME}).")


def update_readme_block(readme: Path, findings: str, findings_path: Path | None = None) -> bool:
    """Rewrite the text between the findings markers of `readme` with the page's summary (links made relative
    to the README); False, and the file untouched, when it has no such markers."""
    if not readme.is_file():
        return False
    text = readme.read_text()
    start, end = text.find(BEGIN), text.find(END)
    if start < 0 or end < start:
        return False
    block = readme_summary(findings)
    if findings_path is not None:  # the page's relative links point from results/; the README's from its own folder
        prefix = os.path.relpath(findings_path.parent, readme.parent)
        block = block.replace("](", f"]({prefix}/" if prefix != "." else "](")
    new = text[:start + len(BEGIN)] + "\n" + block + "\n" + text[end:]
    if new != text:
        readme.write_text(new)
    return True
