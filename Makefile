# One entry point for developers and CI. Self-bootstrapping: the first target that needs the
# virtualenv creates it, and it is re-installed whenever pyproject.toml changes.

PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
# pytest-xdist workers; each starts its own throwaway PostgreSQL server.
WORKERS ?= 2
PYTEST_ARGS ?=

.DEFAULT_GOAL := test
.PHONY: install lint test bench demo clean

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet -e '.[dev]'
	touch $@

install: $(STAMP)

lint: $(STAMP)
	$(BIN)/ruff check src tests
	$(BIN)/mypy
	$(BIN)/lint-imports

# The browser tests drive Debian's /usr/bin/chromium with Playwright; tests/web_world.py
# installs the package when it is missing (nothing is downloaded by Playwright itself).
test: lint
	$(BIN)/pytest -n $(WORKERS) $(PYTEST_ARGS)

bench: $(STAMP)
	$(BIN)/shoudan bench ledger
	$(BIN)/shoudan bench api
	$(BIN)/shoudan bench api --workers 2  # one process per core on the 2-core reference machine
	$(BIN)/shoudan bench gateway
	$(BIN)/shoudan bench gateway --processes 2

# migrate + seed once (prints the demo API keys), then serve on 127.0.0.1:8000 with the
# worker beside it (it sends approved refunds, webhooks and SMS); Ctrl-C stops both
demo: $(STAMP)
	$(BIN)/shoudan demo seed
	$(BIN)/shoudan worker & worker=$$!; trap 'kill $$worker 2>/dev/null' EXIT INT TERM; \
	$(BIN)/shoudan serve

clean:
	rm -rf $(VENV) build dist .pytest_cache .mypy_cache .ruff_cache .hypothesis
	find src tests -name __pycache__ -type d -prune -exec rm -rf {} +
	find src -maxdepth 1 -name '*.egg-info' -type d -prune -exec rm -rf {} +
