# The two commands a newcomer needs: `make demo` and `make test`.
SHELL := /bin/bash
PY := .venv/bin/python
VENV_STAMP := .venv/.installed-$(shell sha256sum requirements.lock pyproject.toml 2>/dev/null | sha256sum | cut -c1-12)

.PHONY: help install binaries image lint test test-unit test-integration test-e2e bench bench-sql bench-backfill demo screens \
        cluster-up cluster-down cluster-smoke cluster-status clean

help:
	@echo "make demo          run a TorghutRollout end to end on the embedded local stack"
	@echo "make test          lint, type-check and run every test tier (unit, integration, e2e)"
	@echo "make cluster-up    start the local control plane (prints KUBECONFIG); cluster-down stops it"
	@echo "make cluster-smoke check the running cluster (Deployment Available, Job Complete); cluster-status"
	@echo "make bench         benchmark stage-advance latency and operator overhead"
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

binaries:
	@bash cluster/build-binaries.sh

# The operator's and the simulator's images from Debian trees, without Docker (README "Images without Docker");
# cached by their inputs, so a second run is instant. Needs root and mmdebstrap, umoci, skopeo, runc (Debian).
image: install
	$(PY) -m torghut_localstack.imagebuild $(IMAGES) $(if $(FORCE),--force,) $(if $(REFRESH_BASE),--refresh-base,)

lint: install
	.venv/bin/ruff check .
	.venv/bin/ruff format --check .
	.venv/bin/mypy
	.venv/bin/lint-imports

# Every test carries a tier marker (unit, integration or e2e); an unmarked test is a collection error.
test: lint binaries
	$(PY) -m pytest

test-unit: install
	$(PY) -m pytest -m unit

test-integration: install
	$(PY) -m pytest -m integration

test-e2e: install binaries
	$(PY) -m pytest -m e2e

bench-sql: install
	$(PY) -m torghut_localstack.bench_sql $(if $(ROWS),--rows $(ROWS),) $(if $(STATE),--state $(STATE),)

bench-backfill: install
	$(PY) -m torghut_localstack.bench_backfill $(if $(ROWS),--rows $(ROWS),)

bench: install binaries
	$(PY) -m torghut_localstack.bench

# The README's pictures, rendered by the plugin's own views; tests/unit/test_screens.py fails when one is stale.
screens: install
	$(PY) -m torghut_localstack.screens docs/screens

demo: install binaries
	$(PY) -m torghut_localstack.demo $(if $(CLUSTER),--cluster $(CLUSTER),)

# `up` builds or verifies the binaries itself and reports how long that and the start took.
cluster-up: install
	$(PY) -m torghut_localstack up

cluster-down: install
	$(PY) -m torghut_localstack down

cluster-smoke: install
	$(PY) -m torghut_localstack smoke

cluster-status: install
	$(PY) -m torghut_localstack status

clean: cluster-down
	rm -rf .local
