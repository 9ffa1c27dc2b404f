# tao.inference - set-up, demo and tests. `make help` lists the targets.
SHELL := /bin/bash
.SHELLFLAGS := -eu -o pipefail -c
.DEFAULT_GOAL := help

PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
COLLECTIONS := $(CURDIR)/.build/collections
LINK := $(COLLECTIONS)/ansible_collections/tao/inference
export ANSIBLE_COLLECTIONS_PATH := $(COLLECTIONS)
export ANSIBLE_NOCOLOR := 1
export ANSIBLE_DEPRECATION_WARNINGS := 0
export ANSIBLE_LOCALHOST_WARNING := 0
export ANSIBLE_INVENTORY_UNPARSED_WARNING := 0
PLAYBOOK := $(BIN)/ansible-playbook
MODULES := tao_inference_service tao_inference_request tao_inference_info tao_inference_prune tao_inference_preflight tao_inference_fleet tao_inference_pull
ROLES := local_docker slurm kubernetes brev lepton inference_service registry_facts

.PHONY: help venv host emulator-image catalog link demo test units integration sanity lint changelog matrix \
        build docs syntax bench clean real-server-image demo-real

help: ## Show the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-18s %s\n", $$1, $$2}'

$(VENV)/.stamp: requirements.txt requirements-test.txt requirements-dev.txt scripts/ensure-venv.sh
	scripts/ensure-venv.sh "$(PYTHON)" "$(VENV)"
	touch $@

venv: $(VENV)/.stamp ## Make the virtualenv with the collection's Python packages

host: ## Make sure a Docker engine answers (installs and starts one as root on Debian)
	scripts/ensure-host.sh

emulator-image: host ## Build the reference microservice image tao-inference-emulator:latest (offline, cached)
	scripts/build-emulator-image.sh

real-server-image: host ## Build tao-inference-real:7.3.0-cpu: NVIDIA's real server from PyPI + a tiny model (cached)
	scripts/build-real-server-image.sh

catalog: venv ## Regenerate plugins/module_utils/_catalog.py from references/ and versions.yaml
	$(BIN)/python scripts/gen-catalog.py

link:
	@mkdir -p $(dir $(LINK)) && ln -sfn ../../../.. $(LINK)

demo: venv emulator-image link ## Start a service with the reference microservice, ask it, print the answer, stop it
	$(PLAYBOOK) playbooks/demo.yml

demo-real: venv real-server-image link ## The demo against NVIDIA's real server (tao-dataservices, tiny model, CPU)
	$(PLAYBOOK) playbooks/demo_real.yml

units: venv link ## Unit tests (no Docker needed)
	$(BIN)/pytest -q tests/unit

integration: venv emulator-image link ## Integration tests through ansible-playbook on the real Docker engine and Slurm
	scripts/ensure-slurm.sh
	scripts/ensure-sshd.sh
	scripts/ensure-brev.sh
	scripts/ensure-kubernetes.sh
	scripts/ensure-lepton.sh
	scripts/ensure-fleet.sh 2
	$(BIN)/pytest -q tests/integration

sanity: venv ## ansible-test sanity (empty ignore files)
	scripts/ansible-test.sh sanity --venv --python 3.11

changelog: venv ## antsibull-changelog lint (changelogs/fragments)
	$(BIN)/antsibull-changelog lint

matrix: venv emulator-image link ## ansible-core 2.17/2.18/2.20/2.21: units + sanity on each, integration on 2.17 and 2.21
	scripts/matrix.sh

lint: venv link ## ansible-lint --profile production
	scripts/lint.sh

build: venv ## ansible-galaxy collection build
	$(BIN)/ansible-galaxy collection build --force --output-path .build/dist . >/dev/null
	@ls .build/dist/tao-inference-*.tar.gz

docs: venv link ## ansible-doc renders every module and role
	@for m in $(MODULES); do $(BIN)/ansible-doc -t module tao.inference.$$m >/dev/null; done
	@for r in $(ROLES); do $(BIN)/ansible-doc -t role tao.inference.$$r >/dev/null; done
	@echo "ansible-doc: $(words $(MODULES)) modules and $(words $(ROLES)) roles render"

syntax: venv link ## ansible-playbook --syntax-check for every playbook
	@for p in playbooks/*.yml; do $(PLAYBOOK) --syntax-check "$$p" >/dev/null; done
	@echo "syntax-check: playbooks/*.yml ok"

test: venv emulator-image real-server-image link ## Every test: checks, sanity, lint, build, docs, changelog, the ansible-core matrix, then unit + integration tests
	scripts/ensure-host.sh --tests
	scripts/ensure-slurm.sh
	scripts/ensure-sshd.sh
	scripts/ensure-brev.sh
	scripts/ensure-kubernetes.sh
	scripts/ensure-lepton.sh
	scripts/ensure-fleet.sh 2
	$(BIN)/python scripts/gen-catalog.py --check
	$(MAKE) --no-print-directory syntax docs build lint sanity changelog
	scripts/matrix.sh
	$(BIN)/pytest -q --durations=15 tests/unit tests/integration

bench: venv emulator-image real-server-image link ## Benchmarks under bench/ (each prints one JSON line last)
	$(BIN)/python bench/start_overhead.py
	$(BIN)/python bench/batch_requests.py
	$(BIN)/python bench/real_server.py
	scripts/ensure-kubernetes.sh >/dev/null
	$(BIN)/python bench/kubernetes_start.py
	$(BIN)/python bench/brev_start.py
	scripts/ensure-lepton.sh >/dev/null
	$(BIN)/python bench/lepton_start.py
	$(BIN)/python bench/fleet_start.py

clean: ## Take down the test hosts and stand-ins this checkout started, then remove the virtualenv and build outputs
	@if [ "$$(id -u)" = 0 ]; then scripts/ensure-fleet.sh --down || true; fi
	-scripts/ensure-brev.sh --down
	@if docker info >/dev/null 2>&1; then scripts/ensure-kubernetes.sh --down; scripts/ensure-lepton.sh --down; fi || true
	rm -rf $(VENV) .build tests/output
