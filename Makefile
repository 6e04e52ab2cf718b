# A new user needs only `make run` and `make test`: each creates .venv and installs the package.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: run demo test test-all bench lint clean

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[test,bench]'
	touch $(STAMP)

run: $(STAMP)
	$(PY) -m experiments.quickstart

demo: $(STAMP)
	$(PY) -m dp2ejax.demo

# Two workers (one per core here); a test file's tests stay in one worker so that its
# module-scoped fixtures (compiled functions) are built once.
TEST_WORKERS ?= 2

test: $(STAMP)
	$(PY) -m pytest -q -n $(TEST_WORKERS) --dist loadfile

test-all: $(STAMP)
	$(PY) -m pytest -q -n $(TEST_WORKERS) --dist loadfile -m ''

bench: $(STAMP)
	$(PY) benchmarks/bench_arith.py

lint: $(STAMP)
	$(PY) -m pip install -q ruff
	$(PY) -m ruff check dp2ejax tests benchmarks experiments

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache
