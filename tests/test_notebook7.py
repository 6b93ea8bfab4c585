"""nbbuild's extension (the build in nbbuild/labextension/) in Notebook 7, `jupyter notebook` >= 7,
driven by headless Chromium as tests/test_lab_extension.py drives JupyterLab: Notebook 7 is built
from JupyterLab's components but has a shell of its own (a page a document, no ILabShell), so the
same extension must find its place there. On a notebook page of a real Notebook 7 server, with a
fresh store, each rule cell gets a badge once it ran; a parameter cell edited and run turns the
cells reading it stale, and their badges say why on hover; after a kernel restart `%load_ext nbbuild`
alone brings the badges back from the store; the side panel, opened from View > Right Sidebar, draws
the task graph, and "build" on a task brings it up to date.

The tests run in order on one page (each goes on from the notebook the one before left); they
synchronise on the page's elements and the kernel's state, never on time.
"""
from __future__ import annotations

import pytest

from browser_support import (ARTIFACTS, BADGE_CELLS as CELLS, FIT, KEPT, PARAMETER, RULE_CELLS, badge_is,
                             badge_states, cell, notebook_page, panel_node, restart_and_load_ext, run,
                             set_source, shots, write_notebook)

pytestmark = pytest.mark.timeout(240)

NOTEBOOK = "nb7/badges.ipynb"


@pytest.fixture(scope="module")
def page(chromium, notebook7):
    """One page on the notebook, in a folder of its own (a fresh store), its cells run once."""
    (notebook7.root / "nb7").mkdir()
    write_notebook(notebook7.root / NOTEBOOK, CELLS)
    yield from notebook_page(chromium, notebook7, NOTEBOOK, "notebook7-console.log")


def test_the_page_is_notebook_7s_and_not_jupyterlabs(page):
    assert page.evaluate("() => window.jupyterapp.name") == "Jupyter Notebook"
    assert page.locator("#jp-main-dock-panel").count() == 0, "JupyterLab's dock panel is not here"


def test_each_rule_cell_gets_a_badge_after_running(page):
    for i in RULE_CELLS:
        badge_is(page, i, "up to date")
    assert badge_states(page) == [None, None, "up to date", "up to date", "up to date", None]
    assert "fit ×5" in cell(page, FIT).locator(".nbbuild-badge").get_attribute("title")


def test_a_parameter_cell_edited_and_run_makes_the_cells_reading_it_stale(page):
    set_source(page, PARAMETER, "threshold = 0.3")
    run(page, "notebook:run-cell", PARAMETER)
    stale = badge_is(page, KEPT, "stale")
    stale.hover()
    assert "global threshold changed" in stale.get_attribute("title"), "the hover text says why"
    badge_is(page, FIT, "stale")
    assert badge_states(page) == [None, None, "up to date", "stale", "stale", None]
    page.locator(".jp-Notebook").screenshot(path=str(ARTIFACTS / "notebook7-stale.png"))


def test_the_panel_opens_from_the_view_menu_draws_the_graph_and_builds_a_task(page):
    page.locator(".lm-MenuBar-itemLabel", has_text="View").click()
    page.locator(".lm-Menu-itemLabel", has_text="Right Sidebar").click()
    page.locator(".lm-Menu-itemLabel", has_text="Show nbbuild: task graph").click()
    panel = page.locator("#nbbuild-panel")
    panel.locator("svg g.node").first.wait_for(state="visible")
    assert panel_node(panel, "fit ×5").count() == 1, "five calls of fit are one node"
    kept = panel_node(panel, "kept")
    assert "nbbuild-stale" in (kept.get_attribute("class") or "")
    kept.click()
    assert page.evaluate("() => window.jupyterapp.shell.currentWidget.content.activeCellIndex") == KEPT, \
        "clicking a task goes to its cell"
    panel.locator(".nbbuild-detail button[data-request='build']").click()
    badge_is(page, KEPT, "up to date")
    page.wait_for_function("""() => [...document.querySelectorAll('#nbbuild-panel svg g.node')].some(
        g => g.textContent.includes('kept') && g.classList.contains('nbbuild-up-to-date'))""")
    page.screenshot(path=str(shots() / "notebook7-panel.png"))


def test_after_a_kernel_restart_the_badges_come_back_from_the_store(page):
    restart_and_load_ext(page, RULE_CELLS)


def test_notebook_7s_file_browser_offers_no_panel(page, notebook7):
    """(last: it leaves the notebook) the panel comes with a notebook: Notebook 7's other pages,
    its file browser here, list no nbbuild panel under View > Right Sidebar."""
    page.goto(f"{notebook7.url}/tree/nb7?token={notebook7.token}", wait_until="domcontentloaded")
    page.locator(".jp-DirListing-item", has_text="badges.ipynb").wait_for()
    page.wait_for_function("() => window.jupyterapp && window.jupyterapp.name === 'Jupyter Notebook'")
    page.evaluate("() => window.jupyterapp.restored")
    assert page.evaluate("() => [...window.jupyterapp.shell.widgets('right')].map(w => w.id)") == []
