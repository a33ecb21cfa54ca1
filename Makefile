# The two commands a newcomer needs: `make demo` and `make test`.
SHELL := /bin/bash
PY := .venv/bin/python
VENV_STAMP := .venv/.installed-$(shell sha256sum requirements.lock pyproject.toml 2>/dev/null | sha256sum | cut -c1-12)

.PHONY: help install deps binaries binaries-argocd image lint test test-unit test-integration test-e2e bench bench-soak bench-sql bench-backfill demo screens argocd-cm \
        cluster-up cluster-down cluster-smoke cluster-status clean

help:
	@echo "make demo          run a TorghutRollout end to end on the embedded local stack"
	@echo "make test          lint, type-check and run every test tier (unit, integration, e2e)"
	@echo "make deps          install the missing Debian packages (Postgres, Prometheus, containerd, runc, CNI, image tools)"
	@echo "make cluster-up    start the local control plane and real node (prints KUBECONFIG); cluster-down stops both"
	@echo "make cluster-smoke check the running cluster (Deployment Available, Job Complete); cluster-status"
	@echo "make bench         peer-shaped and Torghut-shaped rollouts at 1, 50, 200 at once: latency, overhead, CPU, memory, profile"
	@echo "make bench-soak    1,000 rollouts (N=...) and the operator's memory curve"
	@echo "make bench-sql     EXPLAIN and time the preset's SQL on a million executions (ROWS=10000000 for 10 M)"
	@echo "make bench-backfill the route backfill by batch vs one UPDATE, under a trading-shaped writer (ROWS=...)"
	@echo "make image         build the operator and torghut-sim images without Docker (IMAGES=operator, FORCE=1)"
	@echo "make screens       redraw the README's pictures (docs/screens/*.svg) from the plugin's own views"

$(VENV_STAMP): requirements.lock pyproject.toml
	@test -x $(PY) || python3 -m venv .venv
	@test -x .venv/bin/pip || $(PY) -m ensurepip --upgrade >/dev/null
	@.venv/bin/pip install --quiet --disable-pip-version-check -r requirements.lock
	@.venv/bin/pip install --quiet --disable-pip-version-check --no-deps -e .
	@rm -f .venv/.installed-*; touch $@

install: $(VENV_STAMP)

# Debian packages (Postgres, Prometheus, containerd, runc, CNI plugins, image tools): only the missing ones.
deps:
	@bash cluster/install-debian-deps.sh

binaries:
	@bash cluster/build-binaries.sh

# The control plane plus Argo CD and kustomize, for the GitOps e2e tests and `make demo GITOPS=1`.
binaries-argocd:
	@bash cluster/build-binaries.sh --with-argocd

# The operator's and the simulator's images from Debian trees, without Docker (README "Images without Docker");
# cached by their inputs, so a second run is instant. Needs root and mmdebstrap, umoci, skopeo, runc (Debian).
image: deps install
	$(PY) -m torghut_localstack.imagebuild $(IMAGES) $(if $(FORCE),--force,) $(if $(REFRESH_BASE),--refresh-base,)

lint: install
	.venv/bin/ruff check .
	.venv/bin/ruff format --check .
	.venv/bin/mypy
	.venv/bin/lint-imports

# Every test carries a tier marker (unit, integration or e2e); an unmarked test is a collection error.
test: deps lint binaries-argocd
	$(PY) -m pytest

test-unit: install
	$(PY) -m pytest -m unit

test-integration: deps install
	$(PY) -m pytest -m integration

test-e2e: deps install binaries-argocd
	$(PY) -m pytest -m e2e

bench-sql: deps install
	$(PY) -m torghut_localstack.bench_sql $(if $(ROWS),--rows $(ROWS),) $(if $(STATE),--state $(STATE),)

bench-backfill: deps install
	$(PY) -m torghut_localstack.bench_backfill $(if $(ROWS),--rows $(ROWS),)

bench: deps install binaries
	$(PY) -m torghut_localstack.bench $(if $(WORKLOADS),--workloads $(WORKLOADS),) $(if $(SCALES),--scales $(SCALES),)

bench-soak: deps install binaries
	$(PY) -m torghut_localstack.bench --soak $(or $(N),1000)

# manifests/argocd/argocd-cm.yaml from its Lua sources (health.lua, actions/*.lua); a unit test fails when it is stale.
argocd-cm: install
	$(PY) -m torghut_localstack.argocd_cm manifests/argocd

# The README's pictures, rendered by the plugin's own views; tests/unit/test_screens.py fails when one is stale.
screens: install
	$(PY) -m torghut_localstack.screens docs/screens

# GITOPS=1: the rollout goes through a real Argo CD (built on first use, about 10 min cold) syncing from a local Git.
demo: deps install binaries $(if $(GITOPS),binaries-argocd,)
	$(PY) -m torghut_localstack.demo $(if $(CLUSTER),--cluster $(CLUSTER),) $(if $(GITOPS),--gitops,)

# `up` builds or verifies the binaries itself and reports how long that and the start took.
cluster-up: deps install
	$(PY) -m torghut_localstack up

cluster-down: install
	$(PY) -m torghut_localstack down

cluster-smoke: install
	$(PY) -m torghut_localstack smoke

cluster-status: install
	$(PY) -m torghut_localstack status

clean: cluster-down
	rm -rf .local
