# The two commands: `make run` and `make test`. Everything installs into .venv.
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV   := .venv
BIN    := $(VENV)/bin
DATA   ?= ./data
HOST   ?= 127.0.0.1
PORT   ?= 8080
SIZE   ?= full

.PHONY: run test bench bench-memory torture lint clean venv

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --upgrade pip >/dev/null

$(VENV)/.installed: pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install -e '.[test]'
	touch $@

venv: $(VENV)/.installed

run: venv
	@test -f $(DATA)/genesis.json || $(BIN)/ledgerlog --data-dir $(DATA) init
	@echo "ledgerlog dashboard: http://$(HOST):$(PORT)/"
	$(BIN)/ledgerlog --data-dir $(DATA) run --simulate --host $(HOST) --port $(PORT)

test: venv
	$(BIN)/python -m pytest -q -n auto --dist loadfile  # every core; a file stays on one worker (module fixtures once)

# Peers (quixstreams pins an older confluent-kafka) get their own venv, so .venv stays as tested.
BENCH_VENV := .venv-bench
$(BENCH_VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(BENCH_VENV)
	$(BENCH_VENV)/bin/python -m pip install --upgrade pip >/dev/null
	$(BENCH_VENV)/bin/python -m pip install -e '.[test,bench]'
	touch $@

bench: $(BENCH_VENV)/.installed
	$(BENCH_VENV)/bin/python -m benchmarks --size $(SIZE)

# RSS over a long first fold and reproject (10M events: about half an hour on 2 cores)
EVENTS ?= 10000000
bench-memory: venv
	$(BIN)/python -m benchmarks.memory --events $(EVENTS)

# A bounded chaos run: kill -9 (ingest, a node mid-POST and mid-fold, reproject, snapshot create and
# restore), injected EIO/ENOSPC, poison and junk input; then lost / duplicated / digests / answers.
# TRIALS per kind; no trial starts after SECONDS (about 3 minutes on 2 cores). bench-out/torture.json
TRIALS  ?= 3
SECONDS ?= 300
torture: venv
	$(BIN)/python -m benchmarks.torture --trials $(TRIALS) --seconds $(SECONDS)

lint: venv
	$(BIN)/python -m pip install -q ruff mypy import-linter
	$(BIN)/ruff check ledgerlog tests benchmarks
	$(BIN)/mypy ledgerlog
	$(BIN)/lint-imports

clean:
	rm -rf $(VENV) $(BENCH_VENV) bench-out .pytest_cache
