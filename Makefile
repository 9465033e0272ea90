# django-spark-etl: `make demo` runs the nightly pipeline on demo data, `make test` runs the test suite.
# Everything installs into a project-local virtual environment (.venv) from the package index.

PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.DEFAULT_GOAL := help

help: ## list the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-10s %s\n", $$1, $$2}'

$(STAMP): pyproject.toml
	@$(PYTHON) -c 'import sys; sys.exit(0 if sys.version_info >= (3, 11) else "Python 3.11+ is required")'
	@command -v java >/dev/null || { echo "Java 17+ is required for Spark (install a JDK, e.g. openjdk-17-jre)"; exit 1; }
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[dev]'
	@touch $@

install: $(STAMP) ## create .venv and install the project with its test tools

demo: $(STAMP) ## demo data served on loopback, the pipeline for 3 dates (1-4 min: a spark-submit a date)
	$(PY) manage.py migrate --verbosity 0
	$(PY) manage.py demo

# Debian packages whose programs the tests start: the Pushgateway, promtool (package prometheus), and
# Chromium for the ops console's browser tests (Playwright drives /usr/bin/chromium; it never downloads one).
DEBIAN_TEST_PACKAGES := prometheus-pushgateway prometheus chromium
# package:program where the program that shows a package is installed is not named like the package.
DEBIAN_TEST_PROGRAMS := prometheus:promtool

test-deps: ## as root, apt-get install the Debian packages the tests start (DEBIAN_TEST_PACKAGES); else a hint
	@missing=""; for pkg in $(DEBIAN_TEST_PACKAGES); do \
		prog=$$pkg; for m in $(DEBIAN_TEST_PROGRAMS); do [ "$${m%%:*}" = "$$pkg" ] && prog="$${m#*:}"; done; \
		command -v "$$prog" >/dev/null 2>&1 || missing="$$missing $$pkg"; \
	done; \
	[ -n "$$missing" ] || exit 0; \
	if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
		echo "test-deps: installing Debian packages:$$missing"; \
		apt-get install -y -o DPkg::Lock::Timeout=900 $$missing || \
			{ apt-get update && apt-get install -y -o DPkg::Lock::Timeout=900 $$missing; }; \
	else \
		echo "test-deps: missing Debian packages:$$missing (as root: apt-get install$$missing); their tests skip, or fail under CI=true"; \
	fi

# Test processes: the Spark tests spend much of their time starting JVMs and planning, so two share two
# cores well. Each process has its own Spark session, PostgreSQL test database and lock folder.
TEST_WORKERS ?= 2

# A file at a time to each process, in the order tests/conftest.py gives (the files with spark-submits
# first), not pytest-xdist's default of the files with the most tests first, which left the long ones last.
test: $(STAMP) test-deps ## the whole suite: ~1220 tests in 2 processes, SQLite and PostgreSQL, real spark-submits and Celery workers (17 min on 2 quiet cores)
	$(PY) -m pytest -n $(TEST_WORKERS) --dist loadfile --no-loadscope-reorder

bench: $(STAMP) ## run every benchmark (benchmarks/bench_*.py); figures go to benchmarks/results/*.json
	@set -e; for f in benchmarks/bench_*.py; do \
		[ -e "$$f" ] || { echo "no benchmarks yet"; break; }; \
		echo "== $$f"; $(PY) -m benchmarks.$$(basename $$f .py); \
	done

check: $(STAMP) ## lint (ruff), Django's system checks, and validate every shipped pipeline (no data read)
	$(VENV)/bin/ruff check .
	$(PY) manage.py check
	$(PY) manage.py validate_pipeline --all --demo-defaults

clean: ## remove generated data (var/), keeping .venv
	rm -rf var spark-warehouse metastore_db derby.log

.PHONY: help install demo test test-deps bench check clean
