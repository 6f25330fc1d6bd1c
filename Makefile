# Release Guard. `make demo` and `make test` each do all of their own set-up on a fresh machine.
SHELL := /bin/bash
PY ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
export AIRFLOW_HOME ?= $(CURDIR)/.airflow
export AIRFLOW__CORE__DAGS_FOLDER := $(CURDIR)/dags
export AIRFLOW__CORE__PLUGINS_FOLDER := $(CURDIR)/plugins
export AIRFLOW__CORE__LOAD_EXAMPLES := False
export AIRFLOW__CORE__PARALLELISM := 4
export PIP_DISABLE_PIP_VERSION_CHECK := 1

.PHONY: setup system-deps test test-fast demo ui lint typecheck clean

$(STAMP): pyproject.toml constraints.txt
	@command -v $(PY) >/dev/null || { echo "Python 3.11 is required ($(PY) not found)"; exit 2; }
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip setuptools wheel
	$(BIN)/pip install -q -c constraints.txt -e '.[airflow,dev]'
	touch $(STAMP)

# Debian packages: tesseract-ocr for burned-in text, mricron-data for the real-MRI benchmark, chromium and its
# driver for the browser tests of the review page, Orthanc and its DICOMweb plugin for the PACS source tests (the
# tests start their own Orthanc; a system service that apt may start is not used).
system-deps:
	@missing=""; command -v tesseract >/dev/null || missing="$$missing tesseract-ocr tesseract-ocr-eng"; \
	test -d /usr/share/mricron/templates || missing="$$missing mricron-data"; \
	command -v chromedriver >/dev/null || missing="$$missing chromium chromium-driver"; \
	{ test -x /usr/sbin/Orthanc && test -f /usr/share/orthanc/plugins/libOrthancDicomWeb.so; } || missing="$$missing orthanc orthanc-dicomweb"; \
	if [ -n "$$missing" ]; then \
	  if [ "$$(id -u)" = 0 ]; then apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q $$missing; \
	  else echo "please install:$$missing (sudo apt-get install$$missing)"; exit 2; fi; fi

setup: $(STAMP) system-deps

test: setup
	$(BIN)/python -m pytest -q -p no:cacheprovider --timeout=900 --durations=15 tests

test-fast: setup
	$(BIN)/python -m pytest -q -p no:cacheprovider -m "not slow and not system" tests

lint: setup
	$(BIN)/ruff check guards tests dags plugins benchmarks
	$(BIN)/mypy

demo: setup
	$(BIN)/python scripts/demo.py

ui: setup
	$(BIN)/python scripts/demo.py --ui

clean:
	rm -rf demo .airflow .pytest_cache
