# `make run` and `make test` do all the set-up on a fresh machine: a virtual environment in .venv.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
HOST ?= 127.0.0.1
PORT ?= 8000
DEMO_ROWS ?= 100000

CHROMIUM := /usr/bin/chromium

.PHONY: run test lint bench clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip

$(VENV)/.installed: pyproject.toml | $(BIN)/python
	$(BIN)/pip install --quiet -e '.[test]'
	touch $@

run: $(VENV)/.installed
	$(BIN)/exporter migrate
	$(BIN)/exporter seed-demo --if-missing --rows $(DEMO_ROWS)
	EXPORTER_AUTH=$${EXPORTER_AUTH:-off} $(BIN)/exporter serve --host $(HOST) --port $(PORT)

# The web page tests drive Debian's chromium (Playwright never downloads a browser); a fresh CI machine lacks it.
$(CHROMIUM):
	apt-get update
	DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends chromium

test: $(VENV)/.installed $(CHROMIUM)
	$(BIN)/ruff check exporter tests migrations
	$(BIN)/mypy exporter
	$(BIN)/pytest $(PYTEST_ARGS)

bench: $(VENV)/.installed
	$(BIN)/python -m tests.benchmarks
	$(BIN)/python -m tests.bench_files
	$(BIN)/python -m tests.bench_proxy
	$(BIN)/python -m tests.bench_auth

clean:
	rm -rf $(VENV) var .pytest_cache
