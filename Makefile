# Two commands matter on a fresh clone: `make demo` (the main job) and `make test` (every check).
# Both bootstrap what they need: the .venv, the pinned Python packages and the pinned npm CDK CLI.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
BIN := $(VENV)/bin
STAMP := $(VENV)/.snapset-installed
NPM_STAMP := node_modules/.snapset-installed
CODE := lambdas cli infra localaws tests benchmarks scripts app.py

# jsii (the bridge the CDK's Python packages run on) supports Node.js 22 and 24. An older Node
# still synthesizes but prints a twelve-line end-of-life banner: say so once, in one line, and
# keep the banner out of synth, the tests and the demo.
JSII_NODE_VERSIONS := 22 24
NODE_MAJOR := $(shell node -p "process.versions.node.split('.')[0]" 2>/dev/null)
ifeq ($(NODE_MAJOR),)
$(warning snapset: node not found: install Node.js 22 or 24 (jsii's supported versions) and npm)
else ifeq ($(filter $(NODE_MAJOR),$(JSII_NODE_VERSIONS)),)
$(info snapset: Node.js $(NODE_MAJOR) is past jsii's support (22, 24); it works, but upgrade Node)
export JSII_SILENCE_WARNING_END_OF_LIFE_NODE_VERSION := $(NODE_MAJOR)
endif

.PHONY: test lint typecheck unit demo synth diff deploy bench mutate clean install

install: $(STAMP) $(NPM_STAMP)

$(STAMP): requirements.txt requirements-dev.txt lambdas/requirements.txt pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --disable-pip-version-check --upgrade pip
	$(PY) -m pip install --quiet --disable-pip-version-check -r requirements-dev.txt
	$(PY) -m pip install --quiet --disable-pip-version-check --no-deps -e .
	touch $@

$(NPM_STAMP): package.json package-lock.json
	npm ci --no-audit --no-fund --loglevel=error
	touch $@

lint: $(STAMP)
	$(BIN)/ruff check $(CODE)
	$(BIN)/ruff format --check $(CODE)

typecheck: $(STAMP)
	$(BIN)/mypy lambdas/snapset cli/snapset_cli infra localaws scripts benchmarks app.py

unit: $(STAMP) $(NPM_STAMP)
	$(BIN)/pytest -n 2 -q

test: lint typecheck unit

demo: $(STAMP) $(NPM_STAMP)
	$(BIN)/snapset demo

synth: $(STAMP) $(NPM_STAMP)
	PATH="$(CURDIR)/$(BIN):$$PATH" npx --no-install cdk synth --quiet

diff: $(STAMP) $(NPM_STAMP)
	PATH="$(CURDIR)/$(BIN):$$PATH" npx --no-install cdk diff

deploy: $(STAMP) $(NPM_STAMP)
	PATH="$(CURDIR)/$(BIN):$$PATH" npx --no-install cdk deploy

bench: $(STAMP)
	$(PY) benchmarks/throttle_throughput.py
	$(PY) benchmarks/api_calls.py
	$(PY) benchmarks/fan_out_calls.py
	$(PY) benchmarks/localaws_scale.py
	$(PY) benchmarks/nightly_budget.py --fleet 10000 --time-scale 8
	$(PY) benchmarks/c7n_compare.py
	$(PY) benchmarks/app_consistent.py
	$(PY) benchmarks/copy_calls.py

# Mutation testing (mutmut) of retention (its preview and protection checks), idempotency, snapshots, report and pacing against the fast
# tests; survivors are explained in mutation/survivors.txt. Slow, so not part of `make test`.
# `make mutate MODULES="retention idempotency"` runs some of them.
mutate: $(STAMP)
	$(PY) scripts/mutate.py $(MODULES)

clean:
	rm -rf $(VENV) node_modules cdk.out .mypy_cache .ruff_cache .pytest_cache .hypothesis
