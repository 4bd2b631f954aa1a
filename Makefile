# Verl-SWE-RL deployment bundle. `make help` lists the targets.
SHELL := /bin/bash
, := ,
.DEFAULT_GOAL := help

PYTHON312 ?= $(shell PYENV_VERSION=3.12.1 command -v python3.12 >/dev/null 2>&1 && echo "env PYENV_VERSION=3.12.1 python3.12" || echo python3.12)
VENV      ?= .venv
PY        := $(VENV)/bin/python
HVT       := $(VENV)/bin/hvt
CONFIG    ?= config/config.yaml
PYTEST_ARGS ?=
PROXY_VENV ?= .venv-proxy
# make smoke: the training.mode of each experiment, in order (the last is restarted and resumed);
# "sync colocate_async" runs both on the same tasks and puts their step times side by side
SMOKE_MODES ?= colocate_async
# SMOKE_NODES=2: the async experiment on two trainer nodes (containers); the second is lost and back
SMOKE_NODES ?= 1
# images (docs/images.md). BASE_IMAGE: the digest-pinned public base where a registry answers, else
# the test bed's stand-in (`hvt images base`, src/hvt/images/base_images.py; asked once, when first used;
# its reason goes to stderr). Empty = the Dockerfile's default (also without a venv).
IMAGE_PREFIX ?= verl-swe-rl
IMAGE_TAG    ?= $(IMAGE_SHA)
IMAGE_SHA    := $(shell git rev-parse --short HEAD 2>/dev/null || echo dev)
BASE_IMAGE   ?= $(eval BASE_IMAGE := $(shell test -x $(HVT) && $(HVT) images base))$(BASE_IMAGE)
BUILD_CA     ?= /etc/ssl/certs/ca-certificates.crt
PROGRESS     ?= plain
DOCKERFILE_BASE := $(shell sed -n 's/^ARG BASE_IMAGE=//p' Dockerfile)
# COLD_FETCH=1: re-run the stages that fetch from Debian without BuildKit's cache (CI does), so a
# pin the archive dropped fails today; identical files leave every later layer cached.
COLD_FETCH   ?=
DEB_STAGES   := debs-cli-tools debs-trainer debs-agent-runtime
# make provision (docs/provisioning.md): the inventory you filled in, an optional --limit, and
# extra ansible-playbook arguments (e.g. ANSIBLE_ARGS=--ask-vault-pass).
INVENTORY    ?= ansible/inventory/local/hosts.yml
LIMIT        ?=
ANSIBLE_ARGS ?=
ANSIBLE_PLAYBOOK := ANSIBLE_CONFIG=ansible/ansible.cfg $(VENV)/bin/ansible-playbook -i $(INVENTORY) \
                    ansible/provision.yml $(if $(LIMIT),--limit '$(LIMIT)') $(ANSIBLE_ARGS)
LOCK_FLAGS   := --generate-hashes --python-version 3.12 --python-platform x86_64-manylinux_2_28 \
                --index-url https://pypi.org/simple --custom-compile-command 'make lock' -q

.PHONY: help venv proxy-venv testbed check-pins lint typecheck test test-unit dryrun clean repos lock image verify-venv env secrets up down provision provision-inventory provision-check ansible-collections test-ansible smoke

help: ## list the targets
	@grep -hE '^[a-z][a-zA-Z_-]+:.*?## ' $(MAKEFILE_LIST) | awk -F':.*?## ' '{printf "  %-16s %s\n", $$1, $$2}'

$(PY): pyproject.toml
	$(PYTHON312) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip uv
	$(VENV)/bin/uv pip install --python $(PY) -q -e '.[dev]' \
	  $(if $(wildcard locks/overrides.txt),--override locks/overrides.txt)
	@touch $(PY)

venv: $(PY) ## the operator venv (Python 3.12) with hvt and the test tools

# The proxy's own venv (litellm[proxy] needs rich<14, harbor rich>=14.1): the image's locked set
# when locks/proxy.lock exists, else the pinned LiteLLM; plus this checkout, editable.
$(PROXY_VENV)/bin/litellm: pyproject.toml $(wildcard locks/proxy.lock) | $(PY)
	$(PYTHON312) -m venv $(PROXY_VENV)
	$(if $(wildcard locks/proxy.lock),\
	  $(VENV)/bin/uv pip install --python $(PROXY_VENV)/bin/python -q --require-hashes --no-deps -r locks/proxy.lock,\
	  printf 'certifi==2026.10.18\n' > $(PROXY_VENV)/overrides.txt && \
	  $(VENV)/bin/uv pip install --python $(PROXY_VENV)/bin/python -q 'litellm[proxy]==1.108.7' hatchling \
	    'rich==13.9.4' --override $(PROXY_VENV)/overrides.txt)
	$(VENV)/bin/uv pip install --python $(PROXY_VENV)/bin/python -q --no-deps --no-build-isolation -e .
	@touch $@

proxy-venv: $(PROXY_VENV)/bin/litellm ## the LiteLLM proxy venv for tests (.venv-proxy)

testbed: ## prepare this machine: Docker engine + compose + buildx, local base images (idempotent)
	python3 tests/testbed/testbed.py

lint: $(PY) ## ruff, yamllint, hadolint where present
	$(VENV)/bin/ruff check src tests
	$(VENV)/bin/ruff format --check src tests
	$(VENV)/bin/yamllint -s ansible .yamllint compose.yaml compose.cpu.yaml compose.nodes.yaml config
	$(VENV)/bin/hadolint Dockerfile tests/testbed/*.Dockerfile
	cd ansible && $(abspath $(VENV))/bin/ansible-lint

typecheck: $(PY) ## mypy --strict on src/ (hvt, verl_patch, harbor_patch)
	$(VENV)/bin/mypy

test: $(PY) lint typecheck ## everything: lint, types, unit, infra and end-to-end tests
	$(VENV)/bin/pytest $(PYTEST_ARGS)

test-unit: $(PY) ## fast unit tests only
	$(VENV)/bin/pytest tests/unit $(PYTEST_ARGS)

dryrun: $(PY) ## preflight of config/config.yaml against this host
	$(HVT) dryrun --config $(CONFIG)

clean: $(PY) ## stop what this bundle started (keeps checkpoints and wandb runs)
	$(HVT) clean --config $(CONFIG)

repos: $(PY) ## pinned harbor + verl sources into repos/ (config/repos.yaml; no-op when in place)
	$(HVT) repos

lock: $(PY) ## regenerate locks/ (uv and npm with hashes; Debian files by sha256, resolved in the base)
	$(VENV)/bin/uv pip compile pyproject.toml locks/trainer.in --override locks/overrides.txt $(LOCK_FLAGS) -o locks/trainer.lock
	$(VENV)/bin/uv pip compile pyproject.toml locks/proxy.in --override locks/overrides.txt $(LOCK_FLAGS) -o locks/proxy.lock
	$(VENV)/bin/uv pip compile locks/uv.in $(LOCK_FLAGS) -o locks/uv.lock
	cd locks/agent-runtime && npm install --package-lock-only --ignore-scripts --no-audit --no-fund
	$(HVT) pins lock-debian --base-image '$(or $(BASE_IMAGE),$(DOCKERFILE_BASE))'

check-pins: $(PY) ## is every file the locks pin still served? (PyPI, npm, Debian; CI runs it)
	$(HVT) pins check

image: ## build the trainer, proxy and agent-runtime images (tags: latest and the git short sha)
	@test -d repos/verl -a -d repos/harbor || { echo "repos/ is empty: run make repos first" >&2; exit 1; }
	@echo "base image: $(or $(BASE_IMAGE),the Dockerfile default (digest-pinned public image))"
	@for target in agent-runtime proxy trainer; do \
	  echo "== $(IMAGE_PREFIX)/$$target:$(IMAGE_TAG)"; \
	  docker buildx build --progress=$(PROGRESS) --target $$target \
	    $(if $(BASE_IMAGE),--build-arg BASE_IMAGE=$(BASE_IMAGE)) \
	    $(if $(COLD_FETCH),$(foreach s,$(DEB_STAGES),--no-cache-filter $(s))) \
	    $(if $(wildcard $(BUILD_CA)),--secret id=build_ca$(,)src=$(BUILD_CA)) \
	    -t $(IMAGE_PREFIX)/$$target:latest -t $(IMAGE_PREFIX)/$$target:$(IMAGE_TAG) --load . || exit 1; \
	done

verify-venv: ## prove the trainer image runs the code in /workspace/repos (editable, locked, pip check)
	docker run --rm $(IMAGE_PREFIX)/trainer:latest verify-venv

# ---- the stack (compose.yaml) ---------------------------------------------------------------
HVT_UID ?= 1000

env: ## write .env from .env.example with this host's values (keeps an existing .env)
	@if [ -f .env ]; then echo ".env exists: kept (delete it to regenerate)"; else \
	  sed -e "s|^HVT_DATA_DIR=.*|HVT_DATA_DIR=$(CURDIR)/data|" \
	      -e "s|^DOCKER_GID=.*|DOCKER_GID=$$(stat -c %g /var/run/docker.sock 2>/dev/null || echo 999)|" \
	      .env.example > .env && echo "wrote .env (edit MODELS_DIR and DATASETS_DIR)"; fi
	@. ./.env && mkdir -p "$$HVT_DATA_DIR/harbor_trials" && chown $(HVT_UID):$(HVT_UID) "$$HVT_DATA_DIR" "$$HVT_DATA_DIR/harbor_trials" 2>/dev/null || true

secrets: ## create secrets/ (LiteLLM master key, proxy signing key; empty wandb key) for the containers' user only
	@umask 077; mkdir -p secrets/docker-tls secrets/kube
	@test -s secrets/litellm_master_key || { printf 'sk-hvt-%s' "$$(head -c 32 /dev/urandom | od -An -tx1 | tr -d ' \n')" > secrets/litellm_master_key; echo "created secrets/litellm_master_key"; }
	@test -s secrets/proxy_signing_key || { head -c 48 /dev/urandom | od -An -tx1 | tr -d ' \n' > secrets/proxy_signing_key; echo "created secrets/proxy_signing_key"; }
	@test -f secrets/wandb_api_key || { : > secrets/wandb_api_key; echo "created an empty secrets/wandb_api_key (put your key there for wandb online)"; }
	@chown -R $(HVT_UID):$(HVT_UID) secrets 2>/dev/null || true
	@chmod 0400 secrets/litellm_master_key secrets/proxy_signing_key secrets/wandb_api_key

up: env secrets ## docker compose up -d (the GPU stack), then follow the trainer's log
	docker compose up -d
	docker compose logs -f trainer

down: ## docker compose down (checkpoints, logs and trials stay in HVT_DATA_DIR)
	docker compose --profile wandb --profile dashboard down

provision-inventory:
	@test -f $(INVENTORY) || { echo "no inventory at $(INVENTORY): cp -r ansible/inventory/example ansible/inventory/local and fill it in (docs/provisioning.md)" >&2; exit 1; }

provision: $(PY) provision-inventory ## Ansible: GPU trainer host, TLS Docker sandbox host, k8s access (INVENTORY=, LIMIT=)
	$(ANSIBLE_PLAYBOOK)

provision-check: $(PY) provision-inventory ## what make provision would change (check mode with diff; applies nothing)
	$(ANSIBLE_PLAYBOOK) --check --diff

ansible-collections: $(PY) ## install the collections pinned in ansible/requirements.yml from Galaxy into ansible/collections
	$(VENV)/bin/ansible-galaxy collection install -r ansible/requirements.yml -p ansible/collections

test-ansible: $(PY) ## the Ansible roles on systemd hosts in containers (Molecule + testinfra; part of make test)
	$(VENV)/bin/pytest tests/ansible $(PYTEST_ARGS)

smoke: repos image secrets ## the main job on a CPU machine: verl's real trainer, 3 async steps, a restart, a resume (SMOKE_MODES="sync colocate_async" compares; SMOKE_NODES=2: two trainer nodes, one lost)
	$(HVT) smoke stack $(foreach m,$(SMOKE_MODES),--mode $(m)) --nodes $(SMOKE_NODES)
