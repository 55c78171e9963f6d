"""The documentation: the site builds with `mkdocs build --strict` (a broken link, anchor or snippet, or a page
missing from nav fails), the README stays a first-hour page, the generated benchmark page is current, and the
extending guide's worked examples (docs/examples/) really run: a new method, task, model preset and ledger claim."""

from __future__ import annotations

import importlib.util
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
from omegaconf import OmegaConf

from conftest import REPO

DOCS = REPO / "docs"
EXAMPLES = DOCS / "examples"
TINY_RUN = ["train.max_steps=4", "train.batch_size=4", "task.n_train=16", "task.n_eval=8", "tracking=none",
            "train.logging_steps=2"]  # 4 steps: a shorter LoRA-family run can end before every tensor moves


def build_site(repo: Path, site: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(site)], cwd=repo,
                          capture_output=True, text=True, timeout=300, env={**os.environ, "NO_MKDOCS_2_WARNING": "1"})


def test_site_builds_strict(tmp_path: Path) -> None:
    out = build_site(REPO, tmp_path / "site")
    assert out.returncode == 0, out.stderr[-3000:]
    home = (tmp_path / "site" / "index.html").read_text()
    assert "The first hour" in home
    extending = (tmp_path / "site" / "extending" / "index.html").read_text()
    assert "FOURIERFT" in extending and "ParityTask" in extending and "--8&lt;--" not in extending  # snippets included


def test_a_broken_link_fails_the_strict_build(tmp_path: Path) -> None:
    copy = tmp_path / "repo"
    shutil.copytree(DOCS, copy / "docs")
    shutil.copy(REPO / "mkdocs.yml", copy / "mkdocs.yml")
    (copy / "docs" / "troubleshooting.md").write_text("# T\n\n[gone](no-such-page.md)\n")
    out = build_site(copy, tmp_path / "site")
    assert out.returncode != 0 and "no-such-page.md" in out.stderr


def test_readme_is_a_first_hour_page() -> None:
    readme = (REPO / "README.md").read_text()
    assert len(readme.splitlines()) <= 200
    heads = [h for h in re.findall(r"^## (.+)$", readme, flags=re.M)]
    assert heads == ["Prerequisites", "Two commands", "Cheat-sheet", "Layout", "Findings", "Documentation"]
    begin, end = readme.index("<!-- findings:begin -->"), readme.index("<!-- findings:end -->")
    assert begin < end
    for target in re.findall(r"\]\(([^)#\s]+)\)", readme):  # every relative link of the README exists
        if not target.startswith("http") and not target.startswith("results/FINDINGS"):  # another tool writes it
            assert (REPO / target).exists(), target
    listed = set(re.findall(r"\]\(docs/([a-z-]+\.md)\)", readme))
    assert listed == {p.name for p in DOCS.glob("*.md")}  # the README's index names every page


def test_benchmark_page_is_current() -> None:
    from benchmarks.docs_page import main

    assert main(["--check"]) == 0, "run python -m benchmarks.docs_page"


def test_benchmark_page_from_a_hand_made_result(tmp_path: Path) -> None:
    from benchmarks.docs_page import latest_by_kind, main
    from benchmarks.stamp import stamped_name

    machine = {"host": "box-1", "cpu": "Test CPU", "cpu_count": 2, "gpu": None, "torch": "2.13.0",
               "git_commit": "abc1234"}
    for when, tokens in (("2026-01-01T10-00", 111), ("2026-02-01T09-30", 222)):
        (tmp_path / f"{when}_box-1_bench.json").write_text(json.dumps({"machine": machine, "rows": []}))
        table = f"# throughput\n\n| method | tokens/s |\n|---|---:|\n| lora | {tokens} |\n"
        (tmp_path / f"{when}_box-1_bench.md").write_text(table)
    (tmp_path / "2026-03-01T00-00_box-1_bench.json").write_text("{}")  # no .md beside it: not a result
    assert latest_by_kind(tmp_path) == {"bench": tmp_path / "2026-02-01T09-30_box-1_bench.json"}
    page = tmp_path / "page.md"
    assert main(["--results", str(tmp_path), "--page", str(page)]) == 0
    text = page.read_text()
    assert "| lora | 222 |" in text and "| lora | 111 |" not in text  # the newest file only
    assert "box-1: Test CPU, 2 cores, no GPU" in text and "### throughput" in text  # machine named, heading demoted
    assert main(["--results", str(tmp_path), "--page", str(page), "--check"]) == 0
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d-\d\d_my-host_bench", stamped_name("bench", "my host"))


def test_a_benchmark_writes_a_stamped_pair(tmp_path: Path) -> None:
    from benchmarks.docs_page import latest_by_kind
    from benchmarks.stamp import write_stamped

    path = write_stamped(tmp_path, "ddp", {"rows": [1]}, "| a |\n|---|\n| 1 |")
    payload = json.loads(path.read_text())
    assert payload["rows"] == [1] and payload["machine"]["host"] and payload["machine"]["cpu_count"] >= 1
    assert path.with_suffix(".md").read_text().startswith("Measured on ") and latest_by_kind(tmp_path) == {"ddp": path}


# ---- the extending guide's worked examples ------------------------------------------------------------------

def _conf_with(tmp_path: Path, dest: str, example: str) -> Path:
    """conf/ with one example file copied in, as the guide tells a user to (dest e.g. 'method/fourierft.yaml')."""
    from harness.assets import CONF_DIR

    conf = tmp_path / "conf"
    shutil.copytree(CONF_DIR, conf)
    shutil.copy(EXAMPLES / example, conf / dest)
    return conf


def _run(conf: Path, overrides: list[str], runs: Path) -> dict:
    from hydra import compose, initialize_config_dir

    from harness.config import validate
    from harness.pipeline import execute

    with initialize_config_dir(config_dir=str(conf), version_base="1.3"):
        cfg = compose(config_name="config", overrides=[*overrides, f"paths.runs={runs}"])
    spec = validate(cfg)
    return execute(spec, runs / spec.run_id)


def _load(path: Path):
    spec = importlib.util.spec_from_file_location(path.stem, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_example_method_fourierft(tmp_path: Path) -> None:
    conf = _conf_with(tmp_path, "method/fourierft.yaml", "fourierft.yaml")
    result = _run(conf, ["model=tiny-llama", "method=fourierft", "targets=qv", *TINY_RUN], tmp_path / "runs")
    assert result["status"] == "ok", result.get("reason")
    assert result["method"] == "fourierft" and result["r"] is None  # has_rank: false
    assert result["params_trainable"] == 1000 * 2 * 2  # n_frequency per targeted matrix: q and v of 2 layers
    assert json.loads((tmp_path / "runs" / result["run_id"] / "adapter" / "adapter_config.json").read_text())[
        "peft_type"] == "FOURIERFT"


def test_example_task_parity(tmp_path: Path, monkeypatch) -> None:
    from harness import tasks

    module = _load(EXAMPLES / "parity_task.py")
    monkeypatch.setitem(tasks.TASKS, "parity", module.ParityTask)  # what adding it to SINGLE_TASKS does
    conf = _conf_with(tmp_path, "task/parity.yaml", "parity.yaml")
    result = _run(conf, ["model=tiny-llama", "task=parity", "method=full", *TINY_RUN], tmp_path / "runs")
    assert result["status"] == "ok", result.get("reason")
    assert result["task"] == "parity" and result["primary_metric"] == "accuracy" and 0 <= result["score"] <= 1
    task = module.ParityTask(OmegaConf.load(EXAMPLES / "parity.yaml"), tmp_path / "cache")
    splits = {s: task.read_split(s) for s in ("train", "validation", "test")}
    assert [len(v) for v in splits.values()] == [600, 200, 200]
    assert not {r["number"] for r in splits["test"]} & {r["number"] for r in splits["train"]}  # disjoint
    rows = [{"number": n, "label": module.LABELS[n % 2]} for n in (1, 3, 4)]
    assert task.floors(rows)["majority"](rows) == ["odd", "odd", "odd"]  # the majority of the training rows
    assert task.score(["Odd.", "it is even", "EVEN"], rows)["accuracy"] == pytest.approx(2 / 3)


def test_example_model_preset(tmp_path: Path) -> None:
    conf = _conf_with(tmp_path, "model/tiny-qwen2.yaml", "tiny-qwen2.yaml")
    result = _run(conf, ["model=tiny-qwen2", "method=full", *TINY_RUN], tmp_path / "runs")
    assert result["status"] == "ok", result.get("reason")
    assert result["model"] == "tiny-qwen2" and result["run_id"].split("_")[1] == "tiny-qwen2"
    # the hub form is shown in the guide, not run here
    hub = OmegaConf.load(EXAMPLES / "hub-preset.yaml")
    assert hub.source == "hub" and hub.hub_id == "Qwen/Qwen2.5-0.5B-Instruct" and hub.hf_config.model_type == "qwen2"


def test_example_claim(monkeypatch) -> None:
    from analysis.claims import rules as claim_rules
    from analysis.claims.report import gather

    monkeypatch.setattr(claim_rules, "CLAIMS", list(claim_rules.CLAIMS))  # the registration stays in this test
    module = _load(EXAMPLES / "claim_lora_classify.py")
    assert [n for n, _, _ in claim_rules.CLAIMS].count(99) == 1
    verdict = module.claim_99(gather([REPO / "results" / "study-2026-12" / "fair-classify"], estimates=False))
    assert verdict.verdict in {claim_rules.SUPPORTED, claim_rules.REFUTED, claim_rules.INCONCLUSIVE}
    assert verdict.evidence and all("classify" in e for e in verdict.evidence) and "90%" in verdict.rule
    empty = module.claim_99(claim_rules.Evidence(retention=pd.DataFrame(), runs=pd.DataFrame()))
    assert empty.verdict == claim_rules.NOT_RUN and "fair-classify" in empty.missing
