# Front door: `make run` and `make test` do all their own set-up.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: install tools test lint run demo bench clean

install: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[test]'
	touch $(STAMP)

# System tools the tests drive for real (promtool, kcat, Chromium), from Debian packages,
# installed only when missing.
tools:
	bash scripts/ensure-tools.sh
	@if [ -f scripts/ensure-chromium.sh ]; then bash scripts/ensure-chromium.sh; fi

lint: install
	$(BIN)/ruff check services tests benchmarks
	$(BIN)/ruff format --check services tests benchmarks
	$(BIN)/mypy

test: install tools lint
	$(BIN)/pytest -q

# The embedded default: dev broker, one worker with embedded ClickHouse under .metering/,
# and a steady simulated stream; prints where to look; Ctrl-C stops it all.
run: install
	$(BIN)/metering up --workdir .metering

# Offline: simulate a log, replay it into embedded ClickHouse, print every statement.
demo: install
	$(BIN)/metering demo --workdir .metering/demo

bench: install
	$(BIN)/python benchmarks/replay_bench.py
	$(BIN)/python benchmarks/pipeline_bench.py

clean:
	rm -rf .metering .pytest_cache .mypy_cache .ruff_cache
