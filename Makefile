# Two commands set everything up on a fresh machine: `make demo` and `make test`.
# Each installs what it needs (.venv/, pip packages, Debian packages: redis-server, prometheus
# and the node's containerd, runc, CNI plugins, buildah, debootstrap; the Go builds of the control
# plane, CoreDNS, helm, kubeconform and the GitOps health checker; the images), cached under
# ~/.cache/beatkeeper, and is quick once
# it exists.

SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
PYTEST_ARGS ?=

.PHONY: all test test-unit test-integration test-e2e test-kind lint imports demo images \
	system-deps venv cluster-binary helm kubeconform health-checker chart-crds chart-lint schemas clean

all: test

# constraints.txt pins every package to the versions the suite last passed with.
# Five distributions, installed editable: the core, beat, the worker, the operator (with the
# CLI) and the local environment.
$(STAMP): pyproject.toml core/pyproject.toml beat/pyproject.toml worker_image/pyproject.toml \
		devenv/pyproject.toml constraints.txt
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -c constraints.txt -e ./core -e ./beat -e ./worker_image \
		-e '.[test]' -e ./devenv
	@touch $(STAMP)

venv: $(STAMP)

system-deps:
	@scripts/ensure-system-deps

# Builds the control plane and node binary and CoreDNS once (cold: minutes, with progress).
cluster-binary: venv
	@$(BIN)/python -m beatkeeper_devenv.build cluster coredns >/dev/null

# Builds kubeconform from its module once (the schema tests run the real tool; cold ~1 min).
kubeconform: venv
	@$(BIN)/python -m beatkeeper_devenv.build kubeconform >/dev/null

# Builds the images from the Dockerfiles (offline, buildah) when their inputs changed, and
# imports them into the local node if one runs; a node imports them when it starts.
images: venv system-deps
	@$(BIN)/python -m beatkeeper_devenv.images --sizes

# Builds the GitOps health checker (kstatus, gopher-lua, cel-go) once; the e2e health tests run it.
health-checker: venv
	@$(BIN)/python -m beatkeeper_devenv.build health >/dev/null

# Builds helm from its Go module once (cached under ~/.cache/beatkeeper; cold ~4 min).
helm: venv
	@$(BIN)/python -m beatkeeper_devenv.helm >/dev/null

# The chart's CRDs are the repository's: regenerate both copies from the models.
chart-crds: venv
	$(BIN)/python -m beatkeeper.api.crd --write crds --write charts/beatkeeper/crds

# JSON schemas for kubeconform, generated from the models like the CRDs.
schemas: venv
	$(BIN)/python -m beatkeeper.api.jsonschema --write schemas

chart-lint: helm
	$$($(BIN)/python -m beatkeeper_devenv.helm) lint --strict charts/beatkeeper

# Two pytest sessions: one node runs per machine, and the own_node tests start their own.
test: venv imports system-deps cluster-binary helm kubeconform health-checker images
	$(BIN)/python -m pytest -m "not own_node" $(PYTEST_ARGS)
	$(BIN)/python -m pytest -m own_node $(PYTEST_ARGS)

test-unit: venv system-deps helm kubeconform
	$(BIN)/python -m pytest -m unit $(PYTEST_ARGS)

test-integration: venv system-deps
	$(BIN)/python -m pytest -m integration $(PYTEST_ARGS)

test-e2e: venv system-deps cluster-binary helm health-checker images
	$(BIN)/python -m pytest -m "e2e and not own_node" $(PYTEST_ARGS)
	$(BIN)/python -m pytest -m own_node $(PYTEST_ARGS)

# Needs a Docker engine: pytest-kind creates a kind cluster for the end-to-end tier.
test-kind: venv system-deps
	$(BIN)/python -m pip install -q -c constraints.txt -e '.[test,kind]'
	BEATKEEPER_KIND=1 $(BIN)/python -m pytest -m "not own_node" $(PYTEST_ARGS)

PACKAGES := core operator beat worker_image devenv

# The import contracts (pyproject.toml, [tool.importlinter]): the layers of the README's layout.
imports: venv
	$(BIN)/lint-imports

lint: venv imports
	$(BIN)/ruff check $(PACKAGES) tests bench
	$(BIN)/ruff format --check $(PACKAGES) tests bench
	$(BIN)/mypy

# DEMO_SECONDS=N bounds it; with KUBECONFIG set it uses that cluster instead of
# starting a control plane (so the Go build is skipped too).
demo: venv system-deps helm images $(if $(KUBECONFIG),,cluster-binary)
	@$(BIN)/beatkeeper demo $(if $(DEMO_SECONDS),--seconds $(DEMO_SECONDS)) \
		$(if $(KUBECONFIG),--cluster $(KUBECONFIG)) $(if $(DEMO_PROMETHEUS),--prometheus)

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache
