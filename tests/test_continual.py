"""Continual learning: stages that start from another run (`init_from`) resolve their parents, start from the
parent's trained weights, re-score earlier tasks, name the chain in their identity; a `stages:` sweep chains
each grid point; the intruder analysis sees the whole chain's update; bad parents fail in one line."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch

from conftest import TINY, compose, run_cli, run_inprocess
from harness.config import run_id, validate
from harness.errors import ConfigError
from harness.lineage import ancestry, apply_chain, check_parent, parent_run_id

# lr 1e-2 so a few steps move the tiny model's weights well past rounding
MOVE = ["model=tiny-llama", *TINY, "train.lr=1e-2", "train.max_steps=4", "task.n_eval=4", "targets=all-linear"]


def _record(folder: Path, run_id: str, parent: Path | None = None, **extra) -> Path:
    folder.mkdir(parents=True)
    init = {"run_id": parent.name, "path": str(parent)} if parent else None
    (folder / "result.json").write_text(json.dumps({"run_id": run_id, "status": "ok", "init_from": init, **extra}))
    return folder


def test_ancestry_lists_the_chain_root_first_and_finds_moved_folders(tmp_path: Path) -> None:
    a = _record(tmp_path / "runs" / "a", "a")
    b = _record(tmp_path / "runs" / "b", "b", a)
    c = _record(tmp_path / "runs" / "c", "c", b)
    assert ancestry(c) == [a, b, c]
    assert ancestry(a) == [a]
    moved = tmp_path / "copied"
    shutil.copytree(tmp_path / "runs", moved)
    shutil.rmtree(tmp_path / "runs")  # the recorded paths are gone; the chain is found beside the child
    assert [p.name for p in ancestry(moved / "c")] == ["a", "b", "c"]
    assert parent_run_id(str(moved / "b")) == "b"  # the identity is the parent's run_id, not its path


def test_a_chain_that_loops_or_lost_a_parent_is_one_line(tmp_path: Path) -> None:
    a = tmp_path / "a"
    _record(a, "a", tmp_path / "b")
    _record(tmp_path / "b", "b", a)
    with pytest.raises(ConfigError, match="loops"):
        ancestry(a)
    lost = _record(tmp_path / "c", "c", tmp_path / "gone")
    with pytest.raises(ConfigError, match="found neither"):
        ancestry(lost)


@pytest.fixture(scope="module")
def chain(tmp_path_factory) -> dict[str, Path]:
    """classify (LoRA) -> extract (LoRA on top), and classify (full) -> extract (LoRA on top)."""
    runs = tmp_path_factory.mktemp("continual-runs")
    folders: dict[str, Path] = {}
    for root in ("lora", "full"):
        result, folders[root] = run_inprocess([*MOVE, f"method={root}", "r=2", "task=classify"], runs)
        assert result["status"] == "ok", result.get("reason")
        result, folders[f"{root}-extract"] = run_inprocess(
            [*MOVE, "method=lora", "r=2", "task=extract", f"init_from={folders[root]}"], runs)
        assert result["status"] == "ok", result.get("reason")
    return folders


def test_a_stage_records_its_chain_and_rescores_the_earlier_task(chain: dict[str, Path]) -> None:
    root = json.loads((chain["lora"] / "result.json").read_text())
    stage = json.loads((chain["lora-extract"] / "result.json").read_text())
    assert stage["init_from"]["run_id"] == root["run_id"]
    assert [link["run_id"] for link in stage["init_from"]["chain"]] == [root["run_id"]]
    assert stage["config"]["init_from"] == root["run_id"]
    from harness.config import native_bf16  # auto: fp32 where bf16 would be emulated (config.RunSpec.precision)

    assert stage["precision"] == ("bf16-mixed" if native_bf16() else "fp32") and stage["init_from"]["dtype"] == "float32"
    (earlier,) = stage["earlier_tasks"]
    assert earlier["task"] == "classify" and earlier["score_at_stage"] == root["score"]
    assert 0.0 <= earlier["score_now"] <= 1.0 and earlier["base_score"] == root["base_score"]
    assert stage["forgetting_total"] == pytest.approx(stage["forgetting_after"] - root["forgetting_before"])
    # a stage's per-item records: its own task's items, the untuned model being the parent's trained one
    from harness.items import read_items

    stage_items = read_items(chain["lora-extract"])
    assert {r["who"] for r in stage_items} == {"tuned", "base", "floor:majority"}
    assert stage["floors"]["majority"]["test"] < 1 and stage["floor_name"] in ("majority", "base")
    # the stage's untuned model is its parent's: its cached base scores live under their own key
    from harness.base_scores import base_key

    eff = dict(stage["config"])
    keys = {base_key(e, stage["model_fingerprint"], stage["data_fingerprint"], stage["versions"])
            for e in (eff, {k: v for k, v in eff.items() if k != "init_from"})}
    assert len(keys) == 2


def test_a_stage_starts_from_its_parents_trained_weights(chain: dict[str, Path]) -> None:
    from peft import PeftModel

    from harness.runfolder import open_run

    for root in ("lora", "full"):
        run = open_run(chain[root], finished=True)
        base, _, _ = run.load_base()
        started, names = apply_chain(base.float(), [chain[root]])
        reference, _, _ = run.load_base()
        if root == "lora":
            expected = PeftModel.from_pretrained(reference.float(), run.saved).merge_and_unload()
        else:
            from transformers import AutoModelForCausalLM

            expected = AutoModelForCausalLM.from_pretrained(run.saved, dtype=torch.float32)
        for name in names:
            assert torch.equal(started.get_submodule(name).weight, expected.get_submodule(name).weight), name
        assert names and all(n.startswith("model.layers.") for n in names)


def test_the_identity_holds_the_parent_run(chain: dict[str, Path], tmp_path: Path) -> None:
    stage = [*MOVE, "method=lora", "r=2", "task=extract", f"paths.runs={tmp_path}"]
    from_lora = run_id(compose([*stage, f"init_from={chain['lora']}"]))
    from_full = run_id(compose([*stage, f"init_from={chain['full']}"]))
    from_base = run_id(compose(stage))
    assert len({from_lora, from_full, from_base}) == 3
    moved = tmp_path / "moved"
    shutil.copytree(chain["lora"], moved / chain["lora"].name)
    assert run_id(compose([*stage, f"init_from={moved / chain['lora'].name}"])) == from_lora


def test_intruder_weights_of_a_stage_carry_the_whole_chain(chain: dict[str, Path]) -> None:
    from analysis.intruder.report import load_run, weight_pairs
    from harness.runfolder import open_run

    stage_pairs = weight_pairs(load_run(chain["full-extract"]))
    root_pairs = weight_pairs(load_run(chain["full"]))
    stage_only = open_run(chain["full-extract"], finished=True)
    name = "model.layers.0.self_attn.q_proj"
    w0, w = stage_pairs[name]
    assert torch.equal(w0, root_pairs[name][0])  # W0: the pre-trained base, not the parent's weights
    # W - W0 = the full fine-tune's change plus the stage's adapter, so it differs from both alone
    assert not torch.allclose(w, root_pairs[name][1]) and not torch.allclose(w - w0, torch.zeros_like(w))
    assert stage_only.result["init_from"]["chain"][0]["method"] == "full"
    # a stage never shares a label (a group of seeds) with its root or another stage
    assert load_run(chain["full-extract"]).label.endswith("stage 2 (extract)")
    assert "stage" not in load_run(chain["full"]).label


@pytest.mark.parametrize("case,match", [
    ("missing", "holds no readable result.json"),
    ("not-ok", "has status 'failed'"),
    ("other-model", "a stage must continue the same model"),
    ("prefix", "cannot be merged"),
    ("qlora", "does not chain quantised runs"),
])
def test_unusable_parents_fail_in_one_line(case: str, match: str, tmp_path: Path) -> None:
    parent = tmp_path / "parent"
    overrides = ["model=tiny-llama", *TINY, f"paths.runs={tmp_path / 'runs'}"]
    if case != "missing":
        (parent / "adapter").mkdir(parents=True)
        record = {"run_id": "p", "status": "failed" if case == "not-ok" else "ok", "saved_to": "adapter",
                  "model": "smollm2-135m" if case == "other-model" else "tiny-llama", "task": "classify",
                  "method": "prefix" if case == "prefix" else "lora",
                  "config": {"method": {"peft_type": "PREFIX_TUNING" if case == "prefix" else "LORA"}}}
        (parent / "result.json").write_text(json.dumps(record))
    if case == "qlora":
        overrides.append("method=qlora")
    with pytest.raises(ConfigError, match=match) as err:
        check_parent(compose([*overrides, f"init_from={parent}"]))
    assert "\n" not in str(err.value)
    proc = run_cli([*overrides, f"init_from={parent}"])
    assert proc.returncode == 2 and proc.stderr.strip().count("\n") == 0, proc.stderr[-2000:]
    assert not (tmp_path / "runs").exists() or not any((tmp_path / "runs").iterdir())


def test_a_stages_sweep_chains_each_variant_and_resumes(tmp_path: Path) -> None:
    sweep = tmp_path / "sweeps"
    sweep.mkdir()
    (sweep / "chain.yaml").write_text(
        "defaults:\n  - config\n  - override model: tiny-llama\n  - _self_\n"
        "group: chain\nstages:\n  - [task=classify]\n  - [task=extract]\n"
        "variants:\n  - [method=lora, r=2]\n  - [method=full]\n")
    args = ["-m", "--config-dir", str(sweep), "--config-name", "chain", *TINY, "train.lr=1e-2",
            "task.n_eval=4", f"paths.runs={tmp_path / 'runs'}"]
    proc = run_cli(args)
    assert proc.returncode == 0, proc.stderr[-3000:]
    records = {p.name: json.loads((p / "result.json").read_text()) for p in (tmp_path / "runs").iterdir()
               if (p / "result.json").exists()}
    assert len(records) == 4 and all(r["status"] == "ok" for r in records.values()), records
    stages = [r for r in records.values() if r["init_from"]]
    assert sorted(r["task"] for r in stages) == ["extract", "extract"]
    for stage in stages:  # each chain continues its own variant's first stage
        parent = records[stage["init_from"]["run_id"]]
        assert parent["task"] == "classify" and parent["method"] == stage["method"]
    assert "stage 2 of 2 (task=extract)" in proc.stderr + proc.stdout
    again = run_cli(args)
    assert again.returncode == 0 and "2 already ok, 0 to run" in again.stderr + again.stdout


def test_continual_tables_read_the_stages(chain: dict[str, Path], tmp_path: Path) -> None:
    from analysis.continual import main, tables

    scores, stages = tables([chain["lora"].parent])
    assert sorted(stages["stage"].tolist()) == [1, 1, 2, 2]
    two = scores[(scores["stage"] == 2)]
    assert sorted(two["task"].tolist()) == ["classify", "classify", "extract", "extract"]
    assert main([str(chain["lora"].parent), "--out", str(tmp_path / "report")]) == 0
    assert (tmp_path / "report" / "continual.md").read_text().count("\n") == 2 + 4
    assert main([str(tmp_path / "nothing-here")]) == 2


def test_validate_accepts_a_good_parent(chain: dict[str, Path], tmp_path: Path) -> None:
    eff = validate(compose([*MOVE, "method=lora", "r=2", "task=extract", f"init_from={chain['lora']}",
                            f"paths.runs={tmp_path}"])).effective
    assert eff["init_from"] == json.loads((chain["lora"] / "result.json").read_text())["run_id"]
