"""Adapters after training on tiny models: merged weights reproduce the adapter's logits, QLoRA merges into a
de-quantised base, combining refuses what peft cannot combine and scores what it can, serve_bench times all
four modes, and bad input fails in one line."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch

from conftest import TINY, run_inprocess
from harness.adapters import merge, serve_bench
from harness.runfolder import open_run

# lr 1e-2 so a few steps move the weights well past bf16 rounding
MOVE = [*TINY, "train.lr=1e-2", "train.max_steps=4", "task.n_eval=4"]


@pytest.fixture(scope="module")
def tiny_runs(tmp_path_factory) -> dict[str, Path]:
    runs = tmp_path_factory.mktemp("merge-runs")
    specs = {
        "lora_bf16": ["model=tiny-llama", "method=lora", "train.precision=bf16"],  # explicit: auto is fp32 without native bf16
        "lora_fp32": ["model=tiny-llama", "method=lora", "train.precision=fp32"],
        # a tiny model's fingerprint hashes its tensors as loaded, so combined runs share one precision
        "lora_s1": ["model=tiny-llama", "method=lora", "seed=1", "train.precision=bf16"],
        "full": ["model=tiny-llama", "method=full"],
        "bert_s0": ["model=tiny-bert", "method=lora"],
        "bert_s1": ["model=tiny-bert", "method=lora", "seed=1"],
    }
    folders = {}
    for key, overrides in specs.items():
        result, folders[key] = run_inprocess(overrides + MOVE, runs)
        assert result["status"] == "ok", result.get("reason")
    return folders


def _adapter_and_merged_logits(run_dir: Path, out: Path, dtype: str = "float32"):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    info = merge.merge_run(open_run(run_dir, finished=True), out, dtype)
    run = open_run(run_dir, finished=True)
    base, tokenizer, _ = run.load_base()
    inputs = merge.probe_inputs(run, tokenizer)
    untuned = merge.logits(base, inputs)
    as_trained = merge.logits(PeftModel.from_pretrained(base, str(run.saved)), inputs)
    base32, _, _ = run.load_base()
    adapter32 = merge.logits(PeftModel.from_pretrained(base32.float(), str(run.saved)), inputs)
    merged = merge.logits(AutoModelForCausalLM.from_pretrained(out), inputs)  # the saved plain model, as saved
    return info, untuned, as_trained, adapter32, merged


@pytest.mark.parametrize("key", ["lora_fp32", "lora_bf16"])
def test_merged_model_gives_the_adapters_logits(tiny_runs, tmp_path: Path, key: str) -> None:
    out = tmp_path / "merged"
    info, untuned, as_trained, adapter32, merged = _adapter_and_merged_logits(tiny_runs[key], out)
    scale = adapter32.abs().max().item()
    # merged in float32 and saved in float32: the unmerged adapter's logits, to float32 rounding, for a bf16 run too
    diff = (adapter32 - merged).abs().max().item()
    assert diff <= 1e-5 * scale, (diff, scale)
    assert (merged.argmax(-1) == adapter32.argmax(-1)).all()
    # the adapter moved the logits by much more than the tolerance: the comparison can fail
    assert (adapter32 - untuned).abs().max().item() > 100 * 1e-5 * scale
    assert (out / "model.safetensors").exists() and not (out / "adapter_config.json").exists()
    on_disk = json.loads((out / merge.MERGE_FILE).read_text())
    assert on_disk["merged_into"]["model"] == "tiny-llama" and on_disk["saved_dtype"] == "float32"
    assert on_disk["merged_into"]["dtype"] == ("float32" if key == "lora_fp32" else "bfloat16")  # the run's base
    assert on_disk["check"]["max_abs_logit_diff"] <= 1e-5 * on_disk["check"]["max_abs_logit"]
    assert on_disk["check"]["argmax_agreement"] == 1.0
    assert info == on_disk


def test_a_lower_precision_save_says_what_it_loses(tiny_runs, tmp_path: Path) -> None:
    out = tmp_path / "merged-bf16"
    info, _, as_trained, _, merged = _adapter_and_merged_logits(tiny_runs["lora_bf16"], out, "bfloat16")
    assert info["saved_dtype"] == "bfloat16" and "argmax agrees" in info["note"]
    # check compares the bf16 save with the adapter as the run evaluated it, and says so truthfully
    measured = (as_trained - merged.float()).abs().max().item()
    assert info["check"]["max_abs_logit_diff"] == pytest.approx(measured, rel=1e-3, abs=1e-6)
    assert info["check"]["argmax_agreement"] == pytest.approx((as_trained.argmax(-1) == merged.argmax(-1)).float().mean().item())
    assert merge.main([str(tiny_runs["lora_bf16"]), "--out", str(tmp_path / "x"), "--dtype", "int8"]) == 2


def test_qlora_merges_into_its_dequantised_base(tmp_path: Path) -> None:
    _, run_dir = run_inprocess(["model=tiny-llama", "method=qlora", *MOVE], tmp_path / "runs")
    info = merge.merge_run(open_run(run_dir, finished=True), tmp_path / "merged")
    into = info["merged_into"]
    assert into["quantization"]["bits"] == 4 and "de-quantised to bfloat16" in into["base"]
    assert info["saved_dtype"] == "float32"
    from transformers import AutoModelForCausalLM

    plain = AutoModelForCausalLM.from_pretrained(tmp_path / "merged")
    assert getattr(plain.config, "quantization_config", None) is None
    assert all(type(m).__name__ != "Linear4bit" for m in plain.modules())
    scale = info["check"]["max_abs_logit"]
    assert info["check"]["max_abs_logit_diff"] <= 1e-5 * scale  # against the adapter on the same de-quantised base
    assert info["check"]["max_abs_logit_diff_vs_quantized"] <= 3e-2 * scale


def test_combine_refuses_adapters_with_trained_heads(tiny_runs, capsys) -> None:
    code = merge.main([str(tiny_runs["bert_s0"]), str(tiny_runs["bert_s1"]), "--combine", "ties"])
    err = capsys.readouterr().err.strip()
    assert code == 2
    assert len(err.splitlines()) == 1 and err.startswith("error:")
    assert "modules_to_save" in err and "classifier" in err


def test_combined_adapters_are_scored_on_every_task(tiny_runs, tmp_path: Path) -> None:
    from safetensors.torch import load_file

    combos = ["ties", "dare_ties", "linear", "svd", "ties_factors"]
    out = tmp_path / "combined"
    runs = [str(tiny_runs["lora_bf16"]), str(tiny_runs["lora_s1"])]
    code = merge.main([*runs, "--combine", ",".join(combos), "--density", "0.5", "--eval", "--n-eval", "4",
                       "--union", str(tiny_runs["full"]), "--out", str(out)])
    assert code == 0
    table = json.loads((out / merge.TABLE_JSON).read_text())
    assert [r["task"] for r in table["rows"]] == ["classify", "classify"]
    for row in table["rows"]:
        assert row["n"] == 4 and set(row["merged"]) == set(combos)
        for value in [row["base"], row["own"], row["union"], *row["merged"].values()]:
            assert 0.0 <= value <= 1.0
        for k, v in row["retention"].items():
            other = row["union"] if k == "union" else row["merged"][k]
            assert v == (other / row["own"] if row["own"] else None)
    assert set(table["mean"]["merged"]) == set(combos)
    md = (out / merge.TABLE_MD).read_text()
    assert "| task | metric |" in md and "ties (retention)" in md and "union (retention)" in md
    # the names mean task-vector merges; peft's factor-wise forms are labelled as such
    forms = table["combine_forms"]
    assert forms["ties"] == {"peft_combination_type": "ties_svd", "combines": merge.TASK_VECTORS}
    assert forms["linear"]["peft_combination_type"] == "cat" and forms["ties_factors"]["combines"] == merge.FACTORS
    assert "ties_factors = factor-wise (A and B separately)" in md
    # each combined adapter is saved, and differs from both inputs
    inputs = [load_file(Path(r) / "adapter" / "adapter_model.safetensors") for r in runs]
    for kind in combos:
        combined = load_file(out / "adapters" / f"merged_{kind}" / "adapter_model.safetensors")
        key = next(k for k in combined if "lora_B" in k)
        for adapter in inputs:
            assert combined[key].shape[0] == adapter[key].shape[0]
            assert not torch.equal(combined[key].float(), adapter[key].float())


def test_bad_input_fails_in_one_line(tiny_runs, tmp_path: Path, capsys) -> None:
    # a run "on another base": a copy of a real run whose record names another model
    other = tmp_path / "other-base"
    shutil.copytree(tiny_runs["lora_s1"], other)
    record = json.loads((other / "result.json").read_text())
    (other / "result.json").write_text(json.dumps(record | {"model": "smollm2-135m", "model_fingerprint": "x"}))
    cases = {
        "does not exist": [str(tmp_path / "missing"), "--out", str(tmp_path / "m")],
        "different base models": [str(tiny_runs["lora_bf16"]), str(other), "--combine", "ties"],
        "saved a whole model": [str(tiny_runs["full"]), "--out", str(tmp_path / "m")],
        "unknown bogus": [str(tiny_runs["lora_bf16"]), str(tiny_runs["lora_s1"]), "--combine", "bogus"],
        "need --combine": [str(tiny_runs["lora_bf16"]), str(tiny_runs["lora_s1"])],
    }
    for expected, argv in cases.items():
        assert merge.main(argv) == 2, expected
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and err.startswith("error:"), err
        assert all(word in err for word in expected.split()), (expected, err)


def test_serve_bench_times_all_four_modes(tiny_runs, tmp_path: Path) -> None:
    code = serve_bench.main([str(tiny_runs["lora_bf16"]), "--other", str(tiny_runs["lora_s1"]), "--batch-sizes", "1,2",
                             "--new-tokens", "3", "--prompt-tokens", "16", "--repeats", "2", "--out", str(tmp_path)])
    assert code == 0
    report = json.loads((tmp_path / serve_bench.BENCH_JSON).read_text())
    assert set(report["modes"]) == {"base", "unmerged", "merged", "hotswap"}
    for mode, cells in report["modes"].items():
        assert set(cells) == {"1", "2"}
        for cell in cells.values():
            assert cell["tokens_per_s"] > 0 and cell["ms_per_token"] > 0 and cell["prefill_ms"] > 0
            assert len(cell["samples_full_s"]) == 2
    assert report["switch_ms"] > 0 and report["merge_s"] > 0 and report["adapter_load_s"] > 0
    assert set(report["overhead"]) == {"1", "2"}
    for b, o in report["overhead"].items():  # one paired ratio per round, each from that round's own samples
        cells = report["modes"]
        assert o["unmerged_vs_merged_per_round"] == pytest.approx(
            [u / m - 1 for u, m in zip(cells["unmerged"][b]["samples_full_s"], cells["merged"][b]["samples_full_s"])])
    assert "| 2 | hotswap |" in (tmp_path / serve_bench.BENCH_MD).read_text()


def test_serve_bench_modes_differ_only_in_the_adapter(tiny_runs) -> None:
    """Every mode's weights share one requires_grad state: on CPU a frozen lm_head makes torch.matmul copy the
    weight per row, which would slow the frozen modes (peft's copies) for a reason unrelated to adapters."""
    run = open_run(tiny_runs["lora_bf16"], finished=True)
    models, _, setup = serve_bench.build_models(run, None)
    flags = {mode: {p.requires_grad for name, p in model.named_parameters() if "lora_" not in name}
             for mode, model in models.items()}  # adapter weights: set_adapter re-freezes the inactive one
    assert flags == {mode: {True} for mode in serve_bench.MODES}, flags
    assert all(not model.training for model in models.values())
    assert setup["merged_into"]["dtype"] == setup["base"]["dtype"]


def test_serve_bench_refuses_an_encoder(tiny_runs, capsys) -> None:
    assert serve_bench.main([str(tiny_runs["bert_s0"])]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "causal LM" in err


# ---- merges chosen on validation (harness/adapters/merge_select.py) -------------------------------------------

def _select(tiny_runs, out: Path, extra: list[str] = ()) -> dict:
    runs = [str(tiny_runs["lora_bf16"]), str(tiny_runs["lora_s1"])]
    code = merge.main([*runs, "--combine", "ties,linear", "--select", "--grid-weights", "0.5,1.5",
                       "--grid-density", "0.2,0.8", "--n-val", "4", "--n-test", "4", "--out", str(out), *extra])
    assert code == 0
    return json.loads((out / merge.TABLE_JSON).read_text())


def test_select_records_the_validation_grid_and_test_scores(tiny_runs, tmp_path: Path) -> None:
    table = _select(tiny_runs, tmp_path / "sel", ["--union", str(tiny_runs["full"])])
    grids = {k: v["grid"] for k, v in table["selection"].items()}
    assert [(g["weight"], g["density"]) for g in grids["ties"]] == [(0.5, 0.2), (0.5, 0.8), (1.5, 0.2), (1.5, 0.8)]
    assert [(g["weight"], g["density"]) for g in grids["linear"]] == [(0.5, None), (1.5, None)]  # no density
    for kind, grid in grids.items():
        assert all(len(g["val"]) == 2 for g in grid)
        chosen = table["selection"][kind]["chosen"]
        assert (chosen["weight"], chosen["density"]) in [(g["weight"], g["density"]) for g in grid]
    assert table["n_val"] == [4, 4] and table["n_test"] == [4, 4]
    for row in table["rows"]:
        assert set(row["merged"]) == {"ties", "linear"} and {"base", "own", "union", "own_val"} <= set(row)
    assert (tmp_path / "sel" / "adapters" / "merged_ties" / "adapter_model.safetensors").exists()
    assert "chosen weight" in (tmp_path / "sel" / merge.TABLE_MD).read_text()


def test_select_chooses_on_validation_only(tiny_runs, tmp_path: Path, monkeypatch) -> None:
    """Scores that depend on the active adapter's weights; the test side reversed: the choice does not move."""
    from harness.adapters import merge_select

    reverse = {"on": False}

    def fake_score(model, tokenizer, run, which, n) -> float:
        active = model.active_adapter
        total = sum(p.float().abs().sum().item() for name, p in model.named_parameters()
                    if f".{active}." in name and ("lora_A" in name or "lora_B" in name))
        value = total / (1.0 + total)
        return 1.0 - value if which == "test" and reverse["on"] else value

    monkeypatch.setattr(merge_select, "score_split", fake_score)
    forward = _select(tiny_runs, tmp_path / "fwd")
    reverse["on"] = True
    reversed_ = _select(tiny_runs, tmp_path / "rev")
    for kind in ("ties", "linear"):
        grid = forward["selection"][kind]["grid"]
        best = max(grid, key=lambda g: g["val_retention"])
        assert forward["selection"][kind]["chosen"]["weight"] == best["weight"]
        assert forward["selection"][kind]["chosen"] == reversed_["selection"][kind]["chosen"]
        assert len({g["val_retention"] for g in grid}) > 1  # the grid points really differ on validation
    assert forward["selection"]["linear"]["chosen"]["weight"] == 1.5  # larger weight, larger factors: the fake's maximum
    assert forward["rows"][0]["merged"]["ties"] != reversed_["rows"][0]["merged"]["ties"]  # test did change


def test_choose_reads_validation_retention_only() -> None:
    from harness.adapters.merge_select import choose

    grid = [{"val_retention": 0.4, "test": 0.9}, {"val_retention": 0.8, "test": 0.1},
            {"val_retention": 0.8, "test": 0.5}, {"val_retention": None, "test": 1.0}]
    assert choose(grid) == 1  # the highest validation retention, the first of a tie; test never read
    assert choose([{"val_retention": None}, {"val_retention": None}]) == 0


def test_select_refuses_fixed_weights(tiny_runs, tmp_path: Path, capsys) -> None:
    runs = [str(tiny_runs["lora_bf16"]), str(tiny_runs["lora_s1"])]
    code = merge.main([*runs, "--combine", "ties", "--select", "--weights", "1,1", "--out", str(tmp_path / "x")])
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1 and "--select chooses" in err
