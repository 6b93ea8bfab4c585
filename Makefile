# `make test` and `make demo` set up .venv by themselves (idempotent).
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: test demo bench venv clean

venv: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -e '.[dev]'
	touch $(STAMP)

test: $(STAMP)
	$(BIN)/python -m pytest -q tests notebooks --nbval-lax

demo: $(STAMP)
	$(BIN)/python notebooks/run_demo.py

bench: $(STAMP)
	$(BIN)/python benchmarks/bench_noop.py

clean:
	rm -rf $(VENV) .nbbuild .pytest_cache notebooks/.nbbuild notebooks/data
