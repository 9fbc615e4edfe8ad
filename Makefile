# One entry point for every check. `make dev` runs the gateway locally; `make test` runs everything CI runs.
SHELL := /bin/bash
# Prefer the Lambda runtime's version (3.13); the code also runs on 3.11 and 3.12.
PYTHON ?= $(shell for p in python3.13 $(wildcard $(HOME)/.pyenv/versions/3.13*/bin/python3) python3.12 python3.11 python3; do if command -v $$p >/dev/null 2>&1 && $$p -c 'import sys; assert sys.version_info >= (3, 11)' 2>/dev/null; then echo $$p; break; fi; done)
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
SAM_VENV := .venv-sam
PORT ?= 3000

.PHONY: install dev test lint typecheck template-lint unit e2e browser browser-deps kannel-deps build validate clean bench chaos

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip

$(STAMP): $(BIN)/python pyproject.toml layers/core/requirements.txt
	$(BIN)/pip install --quiet -e '.[dev]'
	touch $(STAMP)

install: $(STAMP)

dev: $(STAMP)
	$(BIN)/sms-gateway local --port $(PORT)

test: $(STAMP) browser-deps kannel-deps lint typecheck template-lint
	$(BIN)/pytest -q

# The portal's browser tests drive Debian's headless Chromium through its chromedriver (tests/browser): installed
# with apt-get when missing (as root; `apt-get update` only if the first try fails), never downloaded at run time.
CHROMIUM := /usr/bin/chromium
CHROMEDRIVER := /usr/bin/chromedriver
browser-deps:
	@if [ ! -x $(CHROMIUM) ] || [ ! -x $(CHROMEDRIVER) ]; then \
		echo "installing chromium and chromium-driver with apt-get"; \
		export DEBIAN_FRONTEND=noninteractive; \
		apt-get install -y -qq chromium chromium-driver >/dev/null 2>&1 || \
		{ apt-get update -qq >/dev/null && apt-get install -y -qq chromium chromium-driver >/dev/null; }; \
	fi

# The Kannel adapter's test against a real Kannel (bearerbox, smsbox and the fake SMSC of kannel-extras:
# tests/integration/test_provider_kannel.py::test_against_a_real_kannel) needs Debian's kannel packages: installed with
# apt-get when missing, as the browser's are. Best effort: without them that one test is skipped, nothing fails.
kannel-deps:
	@if ! command -v bearerbox >/dev/null 2>&1 || [ ! -x /usr/lib/kannel/test/fakesmsc ]; then \
		echo "installing kannel and kannel-extras with apt-get (for the real-Kannel test)"; \
		export DEBIAN_FRONTEND=noninteractive; \
		apt-get install -y -qq kannel kannel-extras >/dev/null 2>&1 || \
		{ apt-get update -qq >/dev/null 2>&1 && apt-get install -y -qq kannel kannel-extras >/dev/null 2>&1; } || \
		echo "kannel not installed: the real-Kannel test will be skipped"; \
	fi

# The browser tests alone; screenshots go to artifacts/screenshots/.
browser: $(STAMP) browser-deps
	$(BIN)/pytest -q tests/browser

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

typecheck: $(STAMP)
	$(BIN)/mypy

template-lint: $(STAMP)
	$(BIN)/cfn-lint template.yaml

unit: $(STAMP)
	$(BIN)/pytest -q tests/unit

e2e: $(STAMP)
	$(BIN)/pytest -q tests/e2e

# Figures, not tests: prints tables, writes bench/results.json and docs/benchmarks.md (BENCH_ARGS="--only cold_start").
bench: $(STAMP)
	$(BIN)/python -m bench $(BENCH_ARGS)

# Faults injected into the local stack, invariants checked; exits non-zero if one breaks (CHAOS_ARGS="--messages 300").
chaos: $(STAMP)
	$(BIN)/sms-gateway chaos $(CHAOS_ARGS)

# SAM CLI pins old boto3/pydantic/click, so it lives in its own virtualenv.
$(SAM_VENV)/bin/sam:
	$(PYTHON) -m venv $(SAM_VENV)
	$(SAM_VENV)/bin/pip install --quiet aws-sam-cli

validate: $(SAM_VENV)/bin/sam
	$(SAM_VENV)/bin/sam validate --lint

# sam build for the python3.13 runtime needs a real python3.13 on PATH (a pyenv shim that cannot run it hangs SAM).
PY313 := $(firstword $(foreach p,python3.13 $(wildcard $(HOME)/.pyenv/versions/3.13*/bin/python3.13),$(shell $(p) -c 'import sys; print(sys.executable)' 2>/dev/null)))
build: $(SAM_VENV)/bin/sam
	PATH="$(if $(PY313),$(dir $(PY313)):)$$PATH" $(SAM_VENV)/bin/sam build

clean:
	rm -rf $(VENV) $(SAM_VENV) .aws-sam .pytest_cache .mypy_cache .ruff_cache
