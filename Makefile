# `make test` and `make demo` set up .venv by themselves (idempotent).
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
CHROMIUM := /usr/bin/chromium

.PHONY: test demo bench venv clean browser

venv: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -e '.[dev]'
	touch $(STAMP)

# Debian's Chromium for tests/test_browser.py (never a browser download). Optional: without it
# (not root, no apt, no mirror) one line is printed and the browser test skips, or fails under CI.
browser:
	@if [ -x $(CHROMIUM) ]; then :; \
	elif [ "$$(id -u)" != 0 ] || ! command -v apt-get >/dev/null 2>&1; then \
	  echo "browser: $(CHROMIUM) is missing and apt-get cannot install it here (not root or no apt); tests/test_browser.py will not run"; \
	else \
	  echo "browser: installing Debian's chromium with apt-get"; \
	  if DEBIAN_FRONTEND=noninteractive apt-get update -qq >/dev/null \
	     && apt-cache policy chromium | grep -q 'Candidate: [0-9]' \
	     && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null \
	     && [ -x $(CHROMIUM) ]; then :; \
	  else echo "browser: could not install chromium with apt-get; tests/test_browser.py will not run"; fi; \
	fi

test: $(STAMP) browser
	$(BIN)/python -m pytest -q tests notebooks --nbval-lax

demo: $(STAMP)
	$(BIN)/python notebooks/run_demo.py

bench: $(STAMP)
	$(BIN)/python benchmarks/bench_noop.py

clean:
	rm -rf $(VENV) .nbbuild .pytest_cache notebooks/.nbbuild notebooks/data
