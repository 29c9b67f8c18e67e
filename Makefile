# ovml: `make demo` runs the main job, `make test` the test suite. Both create or
# reuse the environment themselves (uv; dvc as an isolated uv tool).
SHELL := /bin/bash
VENV  := .venv
PY    := $(VENV)/bin/python
UV    := $(shell command -v uv 2>/dev/null || echo $(HOME)/.local/bin/uv)
DVC_VERSION := 3.67.1
DVC   := $(shell uv tool dir --bin 2>/dev/null || echo $(HOME)/.local/bin)/dvc
export PATH := $(CURDIR)/$(VENV)/bin:$(HOME)/.local/bin:$(PATH)

.PHONY: setup demo test lint format dvc-tool browser postgres dvc-repro dvc-yaml ui bench bench-ui bench-download clean

setup: $(VENV)/.installed

$(UV):
	@echo "uv not found: installing it with pip"
	python3 -m pip install --user --quiet uv || python3 -m pip install --quiet uv

# --compile-bytecode: every process (each Dagster step, each test's CLI child) imports
# compiled modules instead of compiling torch, dagster and mlflow again (this machine sets
# PYTHONDONTWRITEBYTECODE=1, so nothing compiled on import is ever kept).
$(VENV)/.installed: pyproject.toml uv.lock | $(UV)
	$(UV) sync --frozen --compile-bytecode --extra dev --extra cluster --python 3.11
	@touch $@

# dvc with its S3 remote support (dvc-s3): the shared-services test pushes to an S3 server.
# Reinstalled when the version differs or `dvc version` does not list s3.
dvc-tool: | $(UV)
	@{ $(DVC) --version 2>/dev/null | grep -qx '$(DVC_VERSION)' && \
		$(DVC) version 2>/dev/null | grep -q '^[[:space:]]*s3 ('; } || \
		$(UV) tool install --quiet --reinstall 'dvc[s3]==$(DVC_VERSION)'

demo: setup
	$(VENV)/bin/ovml demo

test: setup dvc-tool browser postgres
	$(PY) -m pytest -q

# The browser test drives Debian's chromium through Playwright's Python package
# (Playwright's own browser download needs a host this setup cannot assume).
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)
browser:
	@command -v chromium >/dev/null 2>&1 || command -v chromium-browser >/dev/null 2>&1 || { \
		echo "chromium not found: installing Debian's chromium (apt-get)"; \
		$(SUDO) apt-get update -qq && DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -qq chromium; }

# The shared-services test (tests/test_services_stack.py) starts its own Postgres from
# Debian's package (initdb + postgres as the postgres user, on loopback, in a tmp dir).
PG_BIN := $(firstword $(wildcard /usr/lib/postgresql/*/bin))
postgres:
	@test -x "$(PG_BIN)/initdb" || command -v initdb >/dev/null 2>&1 || { \
		echo "postgres not found: installing Debian's postgresql (apt-get)"; \
		$(SUDO) apt-get update -qq && DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -qq postgresql; }

lint: setup
	$(VENV)/bin/ruff check pipelines dagster_project tests bench
	$(VENV)/bin/ruff format --check pipelines dagster_project tests bench

format: setup
	$(VENV)/bin/ruff format pipelines dagster_project tests bench
	$(VENV)/bin/ruff check --fix pipelines dagster_project tests bench

dvc-yaml: setup
	$(VENV)/bin/ovml dvc-yaml

dvc-repro: setup dvc-tool
	@test -d .dvc || $(DVC) init --quiet
	OVML_DVC=$(DVC) $(VENV)/bin/ovml dvc-commit
	$(DVC) repro

ui: setup
	$(VENV)/bin/ovml ui

bench: setup
	$(PY) bench/bench_metrics.py --quick
	$(PY) bench/bench_train.py
	$(PY) bench/bench_backbones.py

# definitions load time and click-to-success of a reused stage in the Dagster UI
bench-ui: setup browser
	$(PY) bench/bench_ui.py

# the downloader against img2dataset (which needs its own venv: it pins older webdataset/pandas)
bench-download: setup
	@test -x .venv-i2d/bin/img2dataset || { $(UV) venv -q .venv-i2d --python 3.11 && \
		$(UV) pip install -q --python .venv-i2d/bin/python img2dataset; }
	$(PY) bench/bench_download.py --img2dataset-bin .venv-i2d/bin/img2dataset

clean:
	rm -rf data models features results mlflow.db mlartifacts .dagster_home
