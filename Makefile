# Verl-SWE-RL deployment bundle. `make help` lists the targets.
SHELL := /bin/bash
.DEFAULT_GOAL := help

PYTHON312 ?= $(shell PYENV_VERSION=3.12.1 command -v python3.12 >/dev/null 2>&1 && echo "env PYENV_VERSION=3.12.1 python3.12" || echo python3.12)
VENV      ?= .venv
PY        := $(VENV)/bin/python
HVT       := $(VENV)/bin/hvt
CONFIG    ?= config/config.yaml
PYTEST_ARGS ?=

.PHONY: help venv testbed lint typecheck test test-unit dryrun clean

help: ## list the targets
	@grep -hE '^[a-z][a-zA-Z_-]+:.*?## ' $(MAKEFILE_LIST) | awk -F':.*?## ' '{printf "  %-16s %s\n", $$1, $$2}'

$(PY): pyproject.toml
	$(PYTHON312) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip uv
	$(VENV)/bin/uv pip install --python $(PY) -q -e '.[dev]'
	@touch $(PY)

venv: $(PY) ## the operator venv (Python 3.12) with hvt and the test tools

testbed: ## prepare this machine: Docker engine + compose + buildx, local base images (idempotent)
	python3 tests/testbed/testbed.py

lint: $(PY) ## ruff, yamllint, hadolint where present
	$(VENV)/bin/ruff check src tests
	$(VENV)/bin/ruff format --check src tests

typecheck: $(PY) ## mypy --strict on src/hvt
	$(VENV)/bin/mypy

test: $(PY) lint typecheck ## everything: lint, types, unit, infra and end-to-end tests
	$(VENV)/bin/pytest $(PYTEST_ARGS)

test-unit: $(PY) ## fast unit tests only
	$(VENV)/bin/pytest tests/unit $(PYTEST_ARGS)

dryrun: $(PY) ## preflight of config/config.yaml against this host
	$(HVT) dryrun --config $(CONFIG)

clean: $(PY) ## stop what this bundle started (keeps checkpoints and wandb runs)
	$(HVT) clean --config $(CONFIG)
