"""The notebooks here are tested with nbval: `pytest --nbval-lax notebooks/` runs each one in a fresh
kernel and fails on any cell that raises.

Hermetic: nbval starts each notebook's kernel in this folder, where nbbuild's store would default to
`notebooks/.nbbuild/`. Instead, every kernel nbval starts gets `NBBUILD_DIR` pointing into a fresh
temporary folder, one per pytest session, shared by the notebooks (as `.nbbuild/` would be) and
removed at the end. The kernel inherits the environment of this process when it starts, so the
variable is set only while nbval sets a notebook up: other tests in the same session (tests/, whose
kernels and shells rely on the default) do not see it.

Under pytest-xdist, `make test` distributes by file (`--dist loadfile`): a notebook's cells run in
order on one worker, in one kernel, as nbval needs. Each worker is a pytest session of its own,
with a temporary store of its own.

To run against a store that outlives the session — for instance to check that the notebooks pass
a second time, when everything is restored from the first run's store — name it:
`NOTEBOOKS_NBBUILD_DIR=/tmp/store pytest --nbval-lax notebooks/` (twice).

A cell whose magic fails (`%build` of an unknown target, a refused `%%rule`) prints a one-line
`UsageError` on stderr and does not count as an error for nbval; here it fails the cell too.
"""
from __future__ import annotations

import os
import shutil
import tempfile

import pytest

KEEP = "NOTEBOOKS_NBBUILD_DIR"
_store: dict[str, str] = {}


def _store_dir() -> str:
    if "path" not in _store:
        kept = os.environ.get(KEEP)
        if kept:
            _store["path"] = kept
        else:
            _store["path"] = _store["temporary"] = tempfile.mkdtemp(prefix="nbbuild-notebooks-")
    return _store["path"]


def _is_notebook_cell(item: pytest.Item) -> bool:
    return type(item).__name__ == "IPyNbCell"


@pytest.hookimpl(wrapper=True)
def pytest_runtest_setup(item):
    """nbval starts a notebook's kernel while setting up its first cell: around that, and only
    that, NBBUILD_DIR names the session's store."""
    if not _is_notebook_cell(item):
        return (yield)
    before = os.environ.get("NBBUILD_DIR")
    os.environ["NBBUILD_DIR"] = _store_dir()
    try:
        return (yield)
    finally:
        if before is None:
            os.environ.pop("NBBUILD_DIR", None)
        else:
            os.environ["NBBUILD_DIR"] = before


@pytest.hookimpl(wrapper=True)
def pytest_runtest_call(item):
    result = yield
    if _is_notebook_cell(item):
        for out in getattr(item, "test_outputs", None) or []:
            text = out.get("text", "") if out.get("output_type") == "stream" and out.get("name") == "stderr" else ""
            for line in text.splitlines():
                if line.startswith("UsageError:"):
                    item.raise_cell_error(f"a magic failed: {line}")   # nbval's own report
    return result


def pytest_unconfigure(config):
    temporary = _store.pop("temporary", None)
    if temporary is not None:
        shutil.rmtree(temporary, ignore_errors=True)
    _store.clear()
