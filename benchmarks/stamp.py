"""Where a benchmark's result goes: one dated, machine-stamped pair of files per invocation, committed.

    benchmarks/results/2026-12-06T21-00_<host>_bench.json   (the payload plus `machine`)
    benchmarks/results/2026-12-06T21-00_<host>_bench.md     (the tables, under a line naming the machine)

Nothing is overwritten, so the folder is the history of sittings; docs/benchmarks-results.md shows the newest
file of each kind (benchmarks/docs_page.py).
"""

from __future__ import annotations

import json
import os
import platform
import re
import socket
import subprocess
import time
from pathlib import Path
from typing import Any

STAMP_FORMAT = "%Y-%m-%dT%H-%M"
NAME = re.compile(r"^(?P<when>\d{4}-\d\d-\d\dT\d\d-\d\d)_(?P<host>[A-Za-z0-9.-]+)_(?P<kind>[a-z0-9-]+)\.json$")


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def machine() -> dict[str, Any]:
    """What the numbers were measured on: host, CPU, cores, GPU, torch, the harness commit."""
    import torch

    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else None
    try:
        commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                                cwd=Path(__file__).parent, timeout=10).stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        commit = None
    return {"host": socket.gethostname(), "cpu": _cpu_model(), "cpu_count": os.cpu_count(), "gpu": gpu,
            "torch": torch.__version__, "platform": platform.platform(), "git_commit": commit}


def machine_line(m: dict[str, Any]) -> str:
    gpu = f", GPU {m['gpu']}" if m.get("gpu") else ", no GPU"
    return (f"{m.get('host')}: {m.get('cpu')}, {m.get('cpu_count')} cores{gpu}; torch {m.get('torch')}; "
            f"harness {m.get('git_commit') or 'unknown commit'}")


def stamped_name(kind: str, host: str | None = None, when: float | None = None) -> str:
    """`<date>T<time>_<host>_<kind>`, without extension; the host keeps letters, digits, dots and dashes."""
    host = re.sub(r"[^A-Za-z0-9.-]+", "-", host or socket.gethostname()).strip("-") or "host"
    return f"{time.strftime(STAMP_FORMAT, time.localtime(when))}_{host}_{kind}"


def write_stamped(out: Path, kind: str, payload: dict[str, Any], markdown: str) -> Path:
    """Write `<stamp>.json` (payload with `machine`) and `<stamp>.md` under `out`; returns the JSON path."""
    m = machine()
    out.mkdir(parents=True, exist_ok=True)
    base = out / stamped_name(kind, m["host"])
    md = f"Measured on {machine_line(m)}, {time.strftime('%Y-%m-%d %H:%M %Z')}.\n\n{markdown.rstrip()}\n"
    base.with_suffix(".json").write_text(json.dumps({"machine": m, **payload}, indent=2, default=str) + "\n")
    base.with_suffix(".md").write_text(md)
    return base.with_suffix(".json")
