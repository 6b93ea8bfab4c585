# `make test` and `make demo` set up .venv by themselves (idempotent).
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: test demo bench venv clean system-packages corpus labextension

venv: $(STAMP)

$(STAMP): pyproject.toml nbbuild/labextension/source.sha256
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -e '.[dev]'
	touch $(STAMP)

# System packages some tests use: Debian's Chromium for tests/test_browser.py (never a browser
# download) and Graphviz's `dot` (the graph also renders without it: tests/test_draw.py takes it
# off the PATH). Optional: without root or apt one line is printed, and those tests skip (or fail
# under CI). The product itself needs neither.
SYSTEM_PACKAGES := /usr/bin/chromium:chromium /usr/bin/dot:graphviz

system-packages:
	@missing=""; for pair in $(SYSTEM_PACKAGES); do [ -x "$${pair%%:*}" ] || missing="$$missing $${pair##*:}"; done; \
	if [ -z "$$missing" ]; then :; \
	elif [ "$$(id -u)" != 0 ] || ! command -v apt-get >/dev/null 2>&1; then \
	  echo "system-packages:$$missing missing and apt-get cannot install them here (not root or no apt); the tests that use them will not run"; \
	else \
	  echo "system-packages: installing$$missing with apt-get"; \
	  DEBIAN_FRONTEND=noninteractive apt-get update -qq >/dev/null || true; \
	  for pkg in $$missing; do \
	    if apt-cache policy $$pkg | grep -q 'Candidate: [0-9]' \
	       && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$pkg >/dev/null; then :; \
	    else echo "system-packages: could not install $$pkg with apt-get; the tests that use it will not run"; fi; \
	  done; \
	fi

# pytest-xdist: one worker more than there are cores (at most 4), a test file at a time: most tests
# wait on a kernel, a server or a browser, so a worker a core leaves the cores idle meanwhile (on 2
# cores, 3 workers took 289 s of pytest where 2 took 326 s, in fresh clones one after the other).
# The tests of a file share its module-scoped fixtures (a kernel, executed notebooks, a Dask
# cluster) and a notebook's cells run in order in one kernel under nbval. Each worker takes its
# files in the order of a plain run. (Not loadgroup: xdist 3.8 cannot mark groups under pytest 9.)
WORKERS := $(shell $(PY) -c 'import os; print(min(4, (os.cpu_count() or 1) + 1))')
PYTEST_WORKERS ?= -n $(WORKERS) --dist loadfile --no-loadscope-reorder

# `-p tests.startup` first: it keeps rfc3987-syntax (3-5 s of CPU at import) out of every pytest
# process, which nbval's import of nbformat would otherwise pay (tests/startup.py)
# mypy first (its settings in pyproject.toml [tool.mypy], its cache in .mypy_cache: a second
# run takes about a second): a type error fails the target before any test runs
test: $(STAMP) system-packages
	$(BIN)/python -m mypy
	$(BIN)/python -m pytest -q -p tests.startup $(PYTEST_WORKERS) tests notebooks --nbval-lax

# The whole corpus of real third-party notebooks (tests/corpus.py: sdists fetched from PyPI and
# cached in ~/.cache/nbbuild-corpus); `make test` runs its fixed part, corpus.SUBSET, and keeps
# their plain runs there (test_corpus.plain_runs): this target executes those too
corpus: $(STAMP)
	$(BIN)/python -m pytest -q -p tests.startup tests/test_corpus.py -m corpus

# `nbbuild run` twice on a fresh temporary store (removed at the end): the first run builds, the
# second, in a fresh kernel, must reuse everything (else the demo fails)
DEMO_NB := notebooks/quickstart.ipynb
demo: $(STAMP)
	@store=$$(mktemp -d); trap 'rm -rf "$$store"' EXIT; \
	echo "== 1. nbbuild run $(DEMO_NB): an empty store, every rule runs"; \
	NBBUILD_DIR=$$store $(BIN)/nbbuild run $(DEMO_NB) || exit 1; \
	echo; echo "== 2. the same again, in a fresh kernel, on the store the first run left"; \
	second=$$(NBBUILD_DIR=$$store $(BIN)/nbbuild run $(DEMO_NB)) || exit 1; echo "$$second"; \
	echo; case "$$second" in \
	  *" builds: ran 0, "*|*" build: ran 0, "*) echo "== the second run ran 0 tasks: it reused every value from the store";; \
	  *) echo "== the second run ran tasks again: nothing should have been stale"; exit 1;; \
	esac

# The JupyterLab extension: TypeScript in labextension/, built with JupyterLab's own builder
# (@jupyterlab/builder, from the npm registry; the shared packages are those of the installed
# JupyterLab) into nbbuild/labextension/, which is committed, so that `make test`, `make demo` and
# `pip install` need no node. After a change of its source, `make labextension` builds it again
# (tests/test_lab_extension.py fails on a build older than its source). Needs node >= 18 and npm
# (Debian: apt-get install nodejs npm).
LAB_CORE = $$($(BIN)/python -c 'import jupyterlab, os; print(os.path.join(os.path.dirname(jupyterlab.__file__), "staging"))')
labextension: $(STAMP)
	@command -v npm >/dev/null || { echo "labextension: needs node and npm (apt-get install nodejs npm)"; exit 1; }
	cd labextension && npm ci --no-audit --no-fund && npx tsc \
	  && node node_modules/@jupyterlab/builder/lib/build-labextension.js --core-path "$(LAB_CORE)" .
	$(BIN)/python labextension/stamp.py write
	$(BIN)/python -m pip install -q -e '.[dev]'

bench: $(STAMP)
	$(BIN)/python benchmarks/bench_noop.py

clean:
	rm -rf $(VENV) .nbbuild .pytest_cache .mypy_cache notebooks/.nbbuild notebooks/data
