# Front door: `make run` and `make test` do all their own set-up.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: install tools test lint run bench clean

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

run: install
	$(BIN)/metering demo --workdir .metering

bench: install
	$(BIN)/python benchmarks/replay_bench.py

clean:
	rm -rf .metering .pytest_cache .mypy_cache .ruff_cache
