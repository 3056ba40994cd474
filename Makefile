# `make run` and `make test` do all the set-up on a fresh machine: a virtual environment in .venv.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
HOST ?= 127.0.0.1
PORT ?= 8000
DEMO_ROWS ?= 100000

CHROMIUM := /usr/bin/chromium
# pytest-xdist workers for `make test`, each with its own scratch database (tests/conftest.py). Four on two cores:
# most tests wait on servers, subprocesses, sleeps in the database and the browser, so four workers keep both cores
# busy (about 2.3x faster than one; two workers were only about 1.3x). `make test XDIST=` runs serially.
XDIST ?= -n 4

.PHONY: run test lint bench clean system-deps

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

# The XLSX tests convert files with LibreOffice headless. Installed here when missing (as root on Debian, as CI
# runs); without it those tests fail, never skip.
system-deps:
	@command -v soffice >/dev/null || { [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null \
		&& apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
		libreoffice-calc >/dev/null; } || echo "make: could not install libreoffice-calc; the XLSX tests will fail"

test: $(VENV)/.installed system-deps $(CHROMIUM)
	$(BIN)/ruff check exporter tests migrations
	$(BIN)/mypy exporter
	$(BIN)/pytest $(XDIST) $(PYTEST_ARGS)

bench: $(VENV)/.installed
	$(BIN)/python -m tests.bench.exports
	$(BIN)/python -m tests.bench.copy
	$(BIN)/python -m tests.bench.files
	$(BIN)/python -m tests.bench.proxy
	$(BIN)/python -m tests.bench.formats
	$(BIN)/python -m tests.bench.auth
	$(BIN)/python -m tests.bench.jobs
	$(BIN)/python -m tests.bench.responsive

clean:
	rm -rf $(VENV) var .pytest_cache
