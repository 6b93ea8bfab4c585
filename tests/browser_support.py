"""Helpers of the browser tests (tests/test_browser.py, test_lab_extension.py, test_notebook7.py): a
JupyterLab or Notebook 7 server of their own, a headless Chromium, and the page helpers they share.
Nothing here downloads a browser: Chromium is Debian's (`make test` installs it), driven by the
Python `playwright` package with `executable_path`.

- `require_browser()` skips (or, with CI set, fails) when Chromium or playwright is missing.
- `JupyterLab` starts `jupyter lab` (`Notebook7`: `jupyter notebook` >= 7, the same way) on
  127.0.0.1 on a free port with a token, its root, workspaces, settings, runtime, config, data and
  IPython dirs in a temporary folder, and stops it and everything it started (kernels included) on
  `stop()`, whatever happened before. It loads nbbuild's extension as this checkout built it
  (nbbuild/labextension/, first on JUPYTER_PATH), whichever nbbuild the environment has installed.
- Page helpers, the same in both front ends (each page has `window.jupyterapp`, whose current
  widget is the notebook): `notebook_page` (a module's page, its cells run), `open_notebook`,
  `run` (a notebook command, then idle), `cell`, `badge_is`, `badge_states`, `execution_counts`,
  `set_source`, `panel_node`; `shots()`, where screenshots go.
"""
from __future__ import annotations

import base64
import importlib
import json
import os
import secrets
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path

import pytest

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-dev-shm-usage",
]
ARTIFACTS = Path(__file__).parent / "artifacts"
LABEXTENSION = Path(__file__).resolve().parent.parent / "nbbuild" / "labextension"
APP_TIMEOUT = 60_000     # ms: the page, the app and the kernel ready
KERNELSPEC = {"name": "python3", "display_name": "Python 3", "language": "python"}

# JupyterLab settings of the test's own: every cell attached to the DOM (no windowing), and no
# news, update or extension-manager look-ups (the network is closed).
LAB_SETTINGS = {
    "@jupyterlab/notebook-extension/tracker.jupyterlab-settings": {"windowingMode": "none"},
    "@jupyterlab/apputils-extension/notification.jupyterlab-settings": {
        "fetchNews": "false", "checkForUpdates": False},
    "@jupyterlab/extensionmanager-extension/plugin.jupyterlab-settings": {"enabled": False},
}


# `python -m jupyterlab`, but for rfc3987-syntax: jupyter-events' schemas import jsonschema, which
# imports it where it is installed, and it builds some 40 Lark grammars at import (3-5 s of CPU,
# a good part of the server's start) for IRI formats that nothing here validates (nbbuild's
# command leaves it out too: nbbuild/__main__.py)
LAB_MAIN = ("import sys; sys.modules['rfc3987_syntax'] = None; "
            "from jupyterlab.labapp import main; sys.exit(main())")
NOTEBOOK_MAIN = LAB_MAIN.replace("jupyterlab.labapp", "notebook.app")
RUN_TIMEOUT = 90_000     # ms: every cell run
SHOW_TIMEOUT = 15_000    # ms: what a message from the kernel changes in the page


def require_browser():
    """The playwright module, or a skip (a failure when CI is set) saying what is missing."""
    missing = []
    if not os.access(CHROMIUM, os.X_OK):
        missing.append(f"{CHROMIUM} (Debian's chromium: `make system-packages`, as root)")
    try:
        sync_api = importlib.import_module("playwright.sync_api")
    except ImportError:
        missing.append("the Python package playwright (`.venv/bin/pip install -e '.[dev]'`)")
    if missing:
        why = "browser test needs " + " and ".join(missing)
        if os.environ.get("CI"):
            pytest.fail(f"{why}; CI is set, so this is a failure, not a skip", pytrace=False)
        pytest.skip(why)
    return sync_api


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# loopback only, and never through a proxy from the environment
_opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))


def write_notebook(path: Path, sources: list[str]) -> None:
    import nbformat
    nb = nbformat.v4.new_notebook(
        cells=[nbformat.v4.new_code_cell(s) for s in sources],
        metadata={"kernelspec": KERNELSPEC, "language_info": {"name": "python"}},
    )
    nbformat.write(nb, str(path))


def decode_data_url(src: str) -> str:
    """The text of a data: URL, base64 or percent-encoded."""
    head, _, data = src.partition(",")
    if head.endswith(";base64"):
        return base64.b64decode(urllib.parse.unquote(data)).decode("utf-8", "replace")
    return urllib.parse.unquote(data)


class _PortTaken(Exception):
    pass


class JupyterLab:
    """`jupyter lab` in a process group of its own, in `base` (a temporary folder)."""

    name = "jupyterlab"
    main = LAB_MAIN
    app = "LabApp"

    def __init__(self, base: Path, start_timeout: float = 60.0):
        self.base = base
        self.root = base / "root"
        self.port = free_port()
        self.token = secrets.token_hex(16)
        self.url = f"http://127.0.0.1:{self.port}"
        self.log_path = base / f"{self.name}-server.log"
        self.start_timeout = start_timeout
        self.proc: subprocess.Popen | None = None
        self._log = None

    def env(self) -> dict[str, str]:
        env = dict(os.environ)
        # no NBBUILD_DIR: each kernel's store is `.nbbuild/` beside its notebook, as a reader's is
        for name in ("JUPYTER_PATH", "JUPYTER_CONFIG_PATH", "PYTHONSTARTUP", "NBBUILD_QUOTA",
                     "NBBUILD_MIN_FREE", "NBBUILD_EVICTION", "NBBUILD_DIR"):
            env.pop(name, None)
        dirs = {
            "JUPYTER_RUNTIME_DIR": "runtime",
            "JUPYTER_CONFIG_DIR": "config",
            "JUPYTER_DATA_DIR": "data",
            "JUPYTERLAB_SETTINGS_DIR": "user-settings",
            "JUPYTERLAB_WORKSPACES_DIR": "workspaces",
            "XDG_CONFIG_HOME": "xdg-config",
            "IPYTHONDIR": "ipython",
        }
        for name, sub in dirs.items():
            (self.base / sub).mkdir(parents=True, exist_ok=True)
            env[name] = str(self.base / sub)
        # this checkout's build of the extension comes first (an installed one of the same name after it
        # is not loaded): the tests drive the extension beside the Python code they test
        found = self.base / "jupyter-path" / "labextensions"
        found.mkdir(parents=True, exist_ok=True)
        if not (found / "nbbuild").exists():
            (found / "nbbuild").symlink_to(LABEXTENSION, target_is_directory=True)
        env["JUPYTER_PATH"] = str(found.parent)
        env["JUPYTER_PLATFORM_DIRS"] = "1"
        env["PYTHONUNBUFFERED"] = "1"
        return env

    def write_settings(self) -> None:
        for rel, value in LAB_SETTINGS.items():
            path = self.base / "user-settings" / rel
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(json.dumps(value))

    def start(self, attempts: int = 3) -> None:
        """Start and wait until /api/status answers; again on another port if the free port found
        was taken meanwhile."""
        self.root.mkdir(parents=True, exist_ok=True)
        for attempt in range(attempts):
            try:
                self._start()
                return
            except _PortTaken:
                self.stop()
                if attempt == attempts - 1:
                    raise RuntimeError(f"{self.name} found no free port:\n" + self.log_tail()) from None
                self.port = free_port()
                self.url = f"http://127.0.0.1:{self.port}"

    def _start(self) -> None:
        env = self.env()
        self.write_settings()
        cmd = [
            sys.executable, "-c", self.main,
            "--no-browser",
            "--ServerApp.ip=127.0.0.1",
            f"--ServerApp.port={self.port}",
            "--ServerApp.port_retries=0",
            f"--IdentityProvider.token={self.token}",
            f"--ServerApp.root_dir={self.root}",
            "--ServerApp.terminals_enabled=False",
            f"--{self.app}.workspaces_dir={self.base / 'workspaces'}",
            f"--{self.app}.user_settings_dir={self.base / 'user-settings'}",
            f"--{self.app}.expose_app_in_browser=True",
            *self.app_args(),
        ]
        if hasattr(os, "geteuid") and os.geteuid() == 0:
            cmd.append("--allow-root")
        self._log = open(self.log_path, "wb")
        self.proc = subprocess.Popen(cmd, cwd=self.root, env=env, stdin=subprocess.DEVNULL,
                                     stdout=self._log, stderr=subprocess.STDOUT, start_new_session=True)
        self.wait_ready()

    def app_args(self) -> list[str]:
        return ["--LabApp.news_url=None", "--LabApp.check_for_updates_class=jupyterlab.NeverCheckForUpdate",
                "--LabApp.extension_manager=readonly"]

    def log_tail(self, n: int = 40) -> str:
        try:
            lines = self.log_path.read_text(errors="replace").splitlines()
        except OSError:
            return "(no server log)"
        return "\n".join(lines[-n:])

    def request(self, method: str, path: str, timeout: float = 5.0) -> tuple[int, bytes]:
        req = urllib.request.Request(self.url + path, method=method,
                                     headers={"Authorization": f"token {self.token}"},
                                     data=b"" if method == "POST" else None)
        with _opener.open(req, timeout=timeout) as r:
            return r.status, r.read()

    def wait_ready(self) -> None:
        deadline = time.monotonic() + self.start_timeout
        last = None
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                if "already in use" in self.log_tail():
                    raise _PortTaken()
                raise RuntimeError(f"{self.name} exited with {self.proc.returncode} before answering:\n"
                                   + self.log_tail())
            try:
                status, _ = self.request("GET", f"/api/status?token={self.token}", timeout=2.0)
                if status == 200:
                    return
            except (urllib.error.URLError, OSError) as e:
                last = e
            time.sleep(0.25)
        raise RuntimeError(f"{self.name} did not answer /api/status in {self.start_timeout:.0f} s "
                           f"({last!r}):\n" + self.log_tail())

    def page_url(self, notebook: str) -> str:
        """The notebook alone in JupyterLab: `reset` empties the workspace, where the server would
        otherwise reopen the notebooks an earlier page of the same server had open."""
        return f"{self.url}/lab/tree/{urllib.parse.quote(notebook)}?reset&token={self.token}"

    def stop(self) -> None:
        """Shut down through the REST API (kernels too), then TERM and KILL the process group, and
        end any process it started that is still there (kernels run in sessions of their own)."""
        proc = self.proc
        if proc is None:
            return
        try:
            descendants = []
            try:
                import psutil
                descendants = psutil.Process(proc.pid).children(recursive=True)
            except Exception:
                pass
            if proc.poll() is None:
                try:
                    self.request("POST", "/api/shutdown", timeout=5.0)
                except Exception:
                    pass
                try:
                    proc.wait(timeout=15)
                except subprocess.TimeoutExpired:
                    pass
            for sig, wait in ((signal.SIGTERM, 10), (signal.SIGKILL, 5)):
                if proc.poll() is not None:
                    break
                try:
                    os.killpg(proc.pid, sig)
                except ProcessLookupError:
                    break
                try:
                    proc.wait(timeout=wait)
                except subprocess.TimeoutExpired:
                    pass
            try:  # what is left of its group (the server may be gone, its children not)
                os.killpg(proc.pid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass
            for child in descendants:
                try:
                    child.terminate()
                except Exception:
                    pass
            if descendants:
                import psutil
                _, alive = psutil.wait_procs(descendants, timeout=5)
                for child in alive:
                    try:
                        child.kill()
                    except Exception:
                        pass
        finally:
            if self._log is not None:
                self._log.close()
            self.proc = None


class Notebook7(JupyterLab):
    """`jupyter notebook` (Notebook 7, built on JupyterLab's components), started and stopped as
    JupyterLab is, with the same settings and this checkout's build of the extension."""

    name = "notebook7"
    main = NOTEBOOK_MAIN
    app = "JupyterNotebookApp"

    def app_args(self) -> list[str]:
        return []     # no news or update checks in Notebook 7; the extension manager is Lab's

    def page_url(self, notebook: str) -> str:
        """The notebook's own page (Notebook 7 has a page a document)."""
        return f"{self.url}/notebooks/{urllib.parse.quote(notebook)}?token={self.token}"


def open_notebook(page, lab: JupyterLab, notebook: str) -> None:
    """The notebook open and current, its kernel connected and idle, all its cells attached."""
    page.goto(lab.page_url(notebook), wait_until="domcontentloaded", timeout=APP_TIMEOUT)
    page.wait_for_function(
        """(path) => {
            const app = window.jupyterapp;
            const w = app && app.shell && app.shell.currentWidget;
            if (!w || !w.context || w.context.path !== path || !w.context.isReady) return false;
            const kernel = w.sessionContext && w.sessionContext.session && w.sessionContext.session.kernel;
            return !!kernel && kernel.connectionStatus === 'connected' && kernel.status === 'idle';
        }""",
        arg=notebook, timeout=APP_TIMEOUT, polling=250)
    cells = len(json.loads((lab.root / notebook).read_text())["cells"])
    page.locator(".jp-Notebook .jp-Cell").nth(cells - 1).wait_for(state="attached")


def shots() -> Path:
    """Where screenshots go: tests/artifacts, or docs/ with NBBUILD_SCREENSHOTS=docs (the README's)."""
    docs = os.environ.get("NBBUILD_SCREENSHOTS") == "docs"
    where = LABEXTENSION.parent.parent / "docs" if docs else ARTIFACTS
    where.mkdir(exist_ok=True)
    return where


def notebook_page(chromium, server: JupyterLab, notebook: str, console_log: str):
    """(a generator, for a module's fixture) A page on `notebook`, its cells run once; the page's
    console is left in tests/artifacts/`console_log` at the end."""
    console: list[str] = []
    context = chromium.new_context(viewport={"width": 1400, "height": 1000})
    try:
        ARTIFACTS.mkdir(exist_ok=True)
        pg = context.new_page()
        pg.set_default_timeout(SHOW_TIMEOUT)
        pg.on("console", lambda m: console.append(f"{m.type}: {m.text}"))
        pg.on("pageerror", lambda e: console.append(f"pageerror: {e}"))
        open_notebook(pg, server, notebook)
        run(pg, "notebook:run-all-cells")
        yield pg
    finally:
        context.close()
        ARTIFACTS.mkdir(exist_ok=True)
        (ARTIFACTS / console_log).write_text("\n".join(console) + "\n")


def run(page, command: str, cell: int | None = None) -> None:
    """A notebook command (on cell `cell` made active first), then wait until the kernel is idle
    and no cell is running or queued."""
    result = page.evaluate(
        """async ([command, cell, ms]) => {
            const w = window.jupyterapp.shell.currentWidget;
            if (cell !== null) w.content.activeCellIndex = cell;
            return Promise.race([
                window.jupyterapp.commands.execute(command).then(() => 'done'),
                new Promise(resolve => setTimeout(() => resolve('timeout'), ms)),
            ]);
        }""",
        [command, cell, RUN_TIMEOUT])
    assert result == "done", f"{command} did not finish in {RUN_TIMEOUT / 1000:.0f} s"
    idle(page)


def idle(page) -> None:
    page.wait_for_function(
        """() => {
            const w = window.jupyterapp.shell.currentWidget;
            const kernel = w.sessionContext.session && w.sessionContext.session.kernel;
            const prompts = [...document.querySelectorAll('.jp-Notebook .jp-InputPrompt')];
            return kernel && kernel.status === 'idle' && !prompts.some(p => p.textContent.includes('*'));
        }""",
        timeout=RUN_TIMEOUT, polling=100)


def cell(page, i: int):
    return page.locator(".jp-Notebook .jp-Cell").nth(i)


def badge_is(page, i: int, state: str, restored: bool | None = None):
    """The badge of cell i once it says `state` (and, if given, whether it is the last session's)."""
    sel = f'.nbbuild-badge[data-state="{state}"]'
    if restored is not None:
        sel += f'[data-restored="{str(restored).lower()}"]'
    found = cell(page, i).locator(sel)
    found.wait_for(state="visible")
    return found


def badge_states(page) -> list[str | None]:
    return page.evaluate("""() => [...document.querySelectorAll('.jp-Notebook .jp-Cell')].map(c => {
        const b = c.querySelector('.nbbuild-badge'); return b ? b.dataset.state : null; })""")


def execution_counts(page) -> list[int | None]:
    return page.evaluate("""() => window.jupyterapp.shell.currentWidget.content.widgets
        .map(c => c.model.executionCount ?? null)""")


# The badges' notebook both front ends are tested on (test_lab_extension.py, test_notebook7.py):
# a parameter, two rule cells reading it in turn, a parametric rule and its calls
BADGE_CELLS = [
    "%load_ext nbbuild",
    "threshold = 0.5",
    "%%rule\nraw = list(range(10))",
    "%%rule\nkept = [x for x in raw if x > threshold * 10]",
    "%%rule fit(alpha)\nfit = sum(kept) * alpha",
    "scores = [fit(a) for a in range(5)]",
]
PARAMETER, RAW, KEPT, FIT = 1, 2, 3, 4
RULE_CELLS = (RAW, KEPT, FIT)


def restart_and_load_ext(page, rule_cells) -> None:
    """Restart the kernel and run only cell 0 (`%load_ext nbbuild`): the badges of `rule_cells`
    come back from the store as they were, marked restored, and no other cell runs."""
    before = badge_states(page)
    counts = execution_counts(page)
    page.evaluate("() => window.jupyterapp.shell.currentWidget.sessionContext.session.kernel.restart()")
    page.wait_for_function("() => document.querySelectorAll('.nbbuild-badge').length === 0")
    idle(page)
    run(page, "notebook:run-cell", 0)
    for i in rule_cells:
        badge_is(page, i, before[i], restored=True)
    assert execution_counts(page)[1:] == counts[1:], "only %load_ext ran"


def set_source(page, i: int, source: str) -> None:
    page.evaluate("""([i, source]) => {
        const w = window.jupyterapp.shell.currentWidget;
        w.content.widgets[i].model.sharedModel.setSource(source);
    }""", [i, source])


def panel_node(panel, text: str):
    return panel.locator("svg g.node", has=panel.page.locator("text", has_text=text)).first
