"""End to end in a real browser: JupyterLab serves a notebook using nbbuild, headless Chromium runs
all its cells, and the outputs are checked in the DOM as a person would see them: the live build
view (an ipywidgets progress bar in `.nbbuild-progress`, then its summary), the graph as an SVG
image, no traceback. A full-page screenshot is left in tests/artifacts/jupyterlab.png, with the
server's log and the browser's console. And the README's tour: Run All on a copy of
notebooks/quickstart.ipynb, which must finish with no error (JupyterLab sends cell ids, which
nbclient does not).

Needs Debian's Chromium at /usr/bin/chromium (`make test` installs it) and the playwright package
(dev extra); without them the test is skipped, or fails when CI is set.
"""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from browser_support import ARTIFACTS, APP_TIMEOUT, decode_data_url, idle, open_notebook, write_notebook

pytestmark = pytest.mark.timeout(240)

E2E = "e2e/e2e.ipynb"
QUICKSTART_COPY = "quickstart/quickstart.ipynb"
CELLS = [
    "%load_ext nbbuild",
    "%%rule raw\nimport time\ntime.sleep(1.5)\nraw = list(range(100))",
    "%%rule clean\nclean = [x * 2 for x in raw]",
    "%build clean --force",
    "%nbbuild graph",
    "%nbbuild dashboard",
]
RAW_CELL, BUILD_CELL, GRAPH_CELL, DASHBOARD_CELL = 1, 3, 4, 5

RUN_TIMEOUT = 60_000     # ms: every cell run
SHOW_TIMEOUT = 15_000    # ms: an output rendered once its cell has run
PROGRESS_BAR = ".nbbuild-progress .widget-hprogress"   # ipywidgets 8's bar in the build view


QUICKSTART = Path(__file__).resolve().parent.parent / "notebooks" / "quickstart.ipynb"


@pytest.fixture(scope="module")
def lab(jupyterlab):
    """The shared JupyterLab (conftest.py) serving the cells above as e2e/e2e.ipynb and a copy of
    notebooks/quickstart.ipynb as quickstart/quickstart.ipynb, each notebook in a folder of its
    own."""
    for folder in ("e2e", "quickstart"):
        (jupyterlab.root / folder).mkdir(parents=True, exist_ok=True)
    write_notebook(jupyterlab.root / E2E, CELLS)
    shutil.copyfile(QUICKSTART, jupyterlab.root / QUICKSTART_COPY)
    return jupyterlab


@pytest.fixture(scope="module")
def browser(chromium):
    return chromium


@pytest.fixture
def page(browser):
    """A page of its own (a fresh browser context) in the module's browser."""
    console: list[str] = []
    context = browser.new_context(viewport={"width": 1280, "height": 1600})
    try:
        pg = context.new_page()
        pg.set_default_timeout(SHOW_TIMEOUT)
        pg.on("console", lambda m: console.append(f"{m.type}: {m.text}"))
        pg.on("pageerror", lambda e: console.append(f"pageerror: {e}"))
        yield pg
    finally:
        try:
            context.close()
        finally:
            ARTIFACTS.mkdir(exist_ok=True)
            (ARTIFACTS / "browser-console.log").write_text("\n".join(console) + "\n")


def run_all(page) -> None:
    """Run every cell and wait until none is running or queued (run-all stops at an error).
    Meanwhile a progress bar of the build view seen visible is noted: a live view may hide it
    when its build ends."""
    page.evaluate(
        """(sel) => {
            window.__nbbuildBarSeen = false;
            window.__nbbuildRunningSeen = [];
            const look = () => {
                for (const el of document.querySelectorAll(sel))
                    if (el.getClientRects().length && getComputedStyle(el).visibility !== 'hidden')
                        window.__nbbuildBarSeen = true;
                // the view's "running <task> <seconds>" line, as the widget updates arrive
                for (const el of document.querySelectorAll('.nbbuild-progress .nbbuild-running'))
                    if (!window.__nbbuildRunningSeen.includes(el.textContent))
                        window.__nbbuildRunningSeen.push(el.textContent);
            };
            window.__nbbuildObserver = new MutationObserver(look);
            window.__nbbuildObserver.observe(document.body, {subtree: true, childList: true, attributes: true});
        }""",
        PROGRESS_BAR)
    result = page.evaluate(
        """(ms) => Promise.race([
            window.jupyterapp.commands.execute('notebook:run-all-cells').then(() => 'done'),
            new Promise(resolve => setTimeout(() => resolve('timeout'), ms)),
        ])""",
        RUN_TIMEOUT)
    assert result == "done", f"notebook:run-all-cells did not finish in {RUN_TIMEOUT / 1000:.0f} s"
    idle(page)


def tracebacks(page) -> list[str]:
    errors = page.locator('.jp-OutputArea-output[data-mime-type="application/vnd.jupyter.stderr"]')
    texts = [errors.nth(i).inner_text() for i in range(errors.count())]
    return [t for t in texts if "Traceback" in t or "UsageError" in t]


def check_progress(page, cell) -> None:
    """The bar visible now, or seen visible while the cells ran."""
    if page.evaluate("() => window.__nbbuildBarSeen === true"):
        return
    page.locator(PROGRESS_BAR).first.wait_for(state="visible", timeout=SHOW_TIMEOUT)


def check_summary(page, cell) -> None:
    view = cell.locator(".nbbuild-progress", has_text="ran ").first
    view.wait_for(state="visible", timeout=SHOW_TIMEOUT)


def check_graph_svg(page, cell) -> None:
    img = cell.locator('.jp-OutputArea-output img[src^="data:image/svg+xml"]').first
    img.wait_for(state="visible", timeout=SHOW_TIMEOUT)
    img.evaluate("""(i) => new Promise((resolve, reject) => {
        if (i.complete) return resolve();
        i.addEventListener('load', resolve); i.addEventListener('error', reject);
    })""")
    width = img.evaluate("(i) => i.naturalWidth")
    assert width > 0, "the graph's SVG image did not decode (naturalWidth 0)"
    svg = decode_data_url(img.get_attribute("src"))
    assert "<svg" in svg, f"the graph's image is no SVG: {svg[:200]!r}"
    for name in ("raw", "clean"):
        assert name in svg, f"the graph's SVG does not name the rule {name!r}"


def check_live(page, cell) -> None:
    """While raw's body slept, the running line was updated in the page: shown more than once,
    with its time going up."""
    seen = [t for t in page.evaluate("() => window.__nbbuildRunningSeen") if t.startswith("running raw ")]
    times = [float(t.split()[2]) for t in seen]
    assert len(times) >= 2 and times == sorted(times) and times[-1] > times[0], seen


def check_dashboard(page, cell) -> None:
    board = cell.locator(".nbbuild-dashboard").first
    board.wait_for(state="visible", timeout=SHOW_TIMEOUT)
    svg = board.locator("svg").first
    svg.wait_for(state="visible", timeout=SHOW_TIMEOUT)
    assert svg.locator("g.node").count() == 2, "the dashboard's graph should have the two rules"
    assert board.locator(".nbbuild-metrics .widget-hprogress").count() == 1, "no store-size bar"
    assert "tasks ran" in board.inner_text() and "hit rate" in board.inner_text()


def test_notebook_in_jupyterlab(page, lab):
    open_notebook(page, lab, E2E)
    run_all(page)
    cells = page.locator(".jp-Notebook .jp-Cell")
    build_cell, graph_cell = cells.nth(BUILD_CELL), cells.nth(GRAPH_CELL)
    checks = [
        ("live build view: .nbbuild-progress .widget-hprogress visible", check_progress, build_cell),
        ("live updates: the running line changed in the page while raw ran", check_live, cells.nth(RAW_CELL)),
        ("dashboard: inline SVG graph, metrics table and store bar", check_dashboard, cells.nth(DASHBOARD_CELL)),
        ("build summary ('ran ') inside .nbbuild-progress", check_summary, build_cell),
        ("graph rendered as an SVG <img> naming raw and clean", check_graph_svg, graph_cell),
    ]
    failed = []
    for name, check, cell in checks:
        try:
            check(page, cell)
        except Exception as e:  # each check reported, then all failures together
            failed.append(f"{name}: {type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}")
    errors = tracebacks(page)
    if errors:
        failed.append("error output in the notebook:\n" + "\n---\n".join(errors))
    ARTIFACTS.mkdir(exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / "jupyterlab.png"), full_page=True)
    if failed:
        pytest.fail("in the browser:\n- " + "\n- ".join(failed)
                    + f"\n(screenshot: {ARTIFACTS / 'jupyterlab.png'})", pytrace=False)


def test_the_quickstart_runs_all_in_jupyterlab(page, lab):
    """The README's tour: Run All on notebooks/quickstart.ipynb in JupyterLab (which sends cell
    ids, unlike nbclient) finishes with no error, and its builds show their views and lines."""
    open_notebook(page, lab, QUICKSTART_COPY)
    run_all(page)
    errors = tracebacks(page)
    assert not errors, "error output in the quickstart:\n" + "\n---\n".join(errors)
    prompts = page.locator(".jp-Notebook .jp-CodeCell .jp-InputPrompt")
    unrun = [i for i in range(prompts.count()) if not any(ch.isdigit() for ch in prompts.nth(i).inner_text())]
    assert not unrun, f"code cells that did not run (Run All stops at an error): {unrun}"
    assert page.locator(".nbbuild-progress", has_text="ran ").count() >= 5
    check_graph_svg(page, page.locator(".jp-Notebook .jp-CodeCell", has_text="%nbbuild graph").first)
