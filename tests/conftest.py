from __future__ import annotations

import compileall
import contextlib
import copy
import fcntl
import hashlib
import importlib.util
import json
import os
import pickle
import sys
import tempfile
from pathlib import Path
from typing import Any, Callable

import pytest

sys.path.insert(0, os.path.dirname(__file__))

# Hundreds of kernels and subprocesses import nbbuild (and some of them these helpers). Where
# PYTHONDONTWRITEBYTECODE is set (this machine sets it), none of them writes the bytecode it
# compiles, so each compiled all of nbbuild again: some 0.25 s of CPU a process. Compiled once
# here instead (a no-op when up to date; __pycache__ is git-ignored).
compileall.compile_dir(importlib.util.find_spec("nbbuild").submodule_search_locations[0], quiet=2)
compileall.compile_dir(os.path.dirname(__file__), maxlevels=0, quiet=2)

# the signing key of the tests, and no bounds from the environment of whoever runs them
os.environ["XDG_CONFIG_HOME"] = tempfile.mkdtemp(prefix="nbbuild-tests-config-")
for _name in ("NBBUILD_QUOTA", "NBBUILD_MIN_FREE", "NBBUILD_EVICTION", "NBBUILD_DIR", "NBBUILD_PROGRESS", "NBBUILD_VIEW",
              "MPLBACKEND"):
    os.environ.pop(_name, None)

import nbbuild  # noqa: E402


# The dearest files of `make test` (each tens of seconds of kernels, servers and clusters; from
# a run's --durations), first. pytest-xdist (--dist loadfile) hands out whole files in the order
# of the collection, keeping two waiting for each worker: with the dearest last (the notebooks
# come after tests/), one worker could still be busy with them long after the other ran out.
DEAREST_FIRST = ("tests/test_corpus.py", "tests/test_cli.py", "tests/test_lab_extension.py", "tests/test_magics.py",
                 "tests/test_elsewhere.py", "tests/test_shared.py", "tests/test_cli_parameters.py", "tests/test_notebooks.py",
                 "tests/test_browser.py", "tests/test_notebook7.py", "tests/test_foreign.py", "tests/test_crash.py",
                 "notebooks/pipeline.ipynb", "tests/test_remote.py", "tests/test_versions_kernel.py",
                 "tests/test_properties.py", "tests/test_replay.py", "tests/test_concurrency.py",
                 "tests/test_versions.py", "tests/test_live.py")


def pytest_collection_modifyitems(config, items):
    rank = {path: i for i, path in enumerate(DEAREST_FIRST)}
    # stable: a file's tests (a notebook's cells) and the other files keep their order
    items.sort(key=lambda item: rank.get(item.nodeid.partition("::")[0], len(rank)))


@pytest.fixture(scope="session")
def kernel_env():
    """For the kernels a test starts (they inherit this process's environment): their own defaults,
    `.nbbuild` in the kernel's working directory and the inline matplotlib backend, whatever the
    environment of whoever runs the tests says (a test that sets them uses monkeypatch, which puts
    them back before the next test)."""
    with pytest.MonkeyPatch.context() as m:
        m.delenv("NBBUILD_DIR", raising=False)
        m.delenv("MPLBACKEND", raising=False)
        yield


KERNEL_TIMEOUT = 120      # s: a deadline for a hung kernel, never reached by a working one
# How an executed notebook's kernel ends. nbclient's graceful default asks it to shut down and
# polls until it has: ~0.4 s a kernel, over 1 s on a busy machine. Nothing a test reads is
# written at a kernel's exit (every build commits its store before its cell ends), so the
# kernel, and what it started, is killed at once.
SHUTDOWN = "immediate"


@pytest.fixture(scope="session")
def execute_notebook(kernel_env):
    """`execute_notebook(nb, directory)` runs the notebook's cells in a fresh kernel working in
    `directory`, as nbclient does (Run All, no cell ids), and returns it with its outputs as a front
    end shows them: consecutive writes to one stream are one output, however the kernel's timed
    flushes split them (`print('ran', 0)` may arrive as 'ran' and ' 0\n'). A cell that raises fails
    the test. The one way tests execute a whole notebook."""
    from nbclient import NotebookClient

    def execute(nb, directory, timeout: float = KERNEL_TIMEOUT):
        NotebookClient(nb, timeout=timeout, shutdown_kernel=SHUTDOWN,
                       resources={"metadata": {"path": str(directory)}}).execute()
        for cell in nb.cells:
            if cell.cell_type == "code":
                cell.outputs = joined_streams(cell.outputs)
        return nb
    return execute


@pytest.fixture(scope="session")
def executed_twice(execute_notebook, tmp_path_factory):
    """`executed_twice(nb, after)`: the notebook executed twice in one new folder, each time in a
    fresh kernel (the second finds the store the first left there, `.nbbuild/`), as a list of
    (the executed notebook, `after(folder)` right after that execution), `after` a module-level
    function whose result pickles.

    Made once per run of the suite for an equal notebook and `after`, whichever test files ask
    (test_kernel.py's notebook is test_elsewhere.py's on threads): under xdist the first worker to
    ask makes it while the others wait, then they read what it made."""
    def executions(nb, after: Callable[[Path], Any]) -> list[tuple[Any, Any]]:
        cells = [(c.cell_type, c.source, c.metadata) for c in nb.cells]       # not their random ids
        what = json.dumps([cells, nb.metadata, after.__module__, after.__qualname__], sort_keys=True)
        key = hashlib.sha256(what.encode()).hexdigest()

        def make():
            folder = tmp_path_factory.mktemp("executed")
            return [(execute_notebook(copy.deepcopy(nb), folder), after(folder)) for _ in range(2)]
        return once(tmp_path_factory, key[:20], make)
    return executions


_made: dict[str, Any] = {}


def once(tmp_path_factory, key: str, make: Callable[[], Any]) -> Any:
    """make()'s result, made once per run of the suite: in this process, or under xdist by the
    first worker to ask, in the folder the workers' temporary folders share (a lock file orders
    them)."""
    if key not in _made:
        if "PYTEST_XDIST_WORKER" not in os.environ:
            _made[key] = make()
        else:
            shared = tmp_path_factory.getbasetemp().parent / "made-once"
            shared.mkdir(exist_ok=True)
            with open(shared / f"{key}.lock", "w") as lock:
                fcntl.flock(lock, fcntl.LOCK_EX)          # released when closed
                done = shared / f"{key}.pickle"
                if done.exists():
                    _made[key] = pickle.loads(done.read_bytes())
                else:
                    _made[key] = make()
                    (shared / f"{key}.part").write_bytes(pickle.dumps(_made[key]))
                    (shared / f"{key}.part").replace(done)
    return _made[key]


def joined_streams(outputs: list) -> list:
    joined: list = []
    for o in outputs:
        last = joined[-1] if joined else None
        if (o.output_type == "stream" and last is not None and last.output_type == "stream"
                and last.name == o.name):
            last.text += o.text
        else:
            joined.append(o)
    return joined


@pytest.fixture(scope="session")
def kernel_in(kernel_env):
    """`with kernel_in(directory, env=None) as (km, kc):` a fresh python3 kernel working in
    `directory` (with `env`, else this process's environment), shut down afterwards. The one way
    tests start a kernel of their own."""
    from jupyter_client.manager import start_new_kernel

    @contextlib.contextmanager
    def start(directory, env: dict | None = None, timeout: float = KERNEL_TIMEOUT):
        extra = {} if env is None else {"env": env}
        km, kc = start_new_kernel(kernel_name="python3", cwd=str(directory), startup_timeout=timeout, **extra)
        try:
            yield km, kc
        finally:
            kc.stop_channels()
            km.shutdown_kernel(now=True)
    return start


@pytest.fixture
def store_dir(tmp_path):
    return tmp_path / "store"


@pytest.fixture
def b(store_dir):
    with nbbuild.Build(store_dir, workers=2) as build:
        yield build


@pytest.fixture
def calls():
    """Run counts, asserted as lists: rules append their name when their body runs."""
    return []


# ------------------------------------------------------------ JupyterLab in a browser

@pytest.fixture(scope="session")
def sync_api():
    """playwright.sync_api, or a skip (a failure under CI) saying what is missing (browser_support)."""
    from browser_support import require_browser
    return require_browser()


def serve(server):
    """A browser test's server (browser_support.JupyterLab or Notebook7), started, and stopped with
    everything it started at the end; its log is left in tests/artifacts/{name}-server.log."""
    import shutil
    from browser_support import ARTIFACTS
    try:
        server.start()
        yield server
    finally:
        server.stop()
        ARTIFACTS.mkdir(exist_ok=True)
        if server.log_path.exists():
            shutil.copyfile(server.log_path, ARTIFACTS / server.log_path.name)


@pytest.fixture(scope="session")
def jupyterlab(sync_api, tmp_path_factory):
    """One JupyterLab server for every browser test of this process (its start is the dearest part
    of each): tests put their notebooks in folders of their own under `.root`, so that each kernel
    keeps its store, `.nbbuild/`, beside its notebook, as a reader's would be."""
    from browser_support import JupyterLab
    yield from serve(JupyterLab(tmp_path_factory.mktemp("lab")))


@pytest.fixture(scope="module")
def notebook7(sync_api, tmp_path_factory):
    """A Notebook 7 server (`jupyter notebook` >= 7) for the module that asks for it, with a root of
    its own (so fresh stores); stopped after the module."""
    from browser_support import Notebook7
    yield from serve(Notebook7(tmp_path_factory.mktemp("notebook7")))


@pytest.fixture(scope="session")
def chromium(sync_api):
    """One headless Chromium (Debian's) for every browser test of this process."""
    from browser_support import CHROMIUM, CHROMIUM_ARGS
    with sync_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS)
        try:
            yield browser
        finally:
            browser.close()
