"""nbbuild's JupyterLab extension (labextension/, built into nbbuild/labextension/) in a real
browser: headless Chromium drives the shared JupyterLab (conftest.py), which loads this checkout's
build. Each rule cell carries a badge saying whether it is up to date; a parameter cell edited and
run makes the cells reading it stale, live; after a kernel restart, `%load_ext nbbuild` alone brings
the badges back from the store; the side panel draws the task graph, expands a rule's collapsed
calls, and "build" on a task brings it up to date; the pipeline's graph fits its output area.

The tests of this file run in order on one page (each goes on from the notebook the one before
left): they synchronise on the page's elements and the kernel's state, never on time. Screenshots
are left in tests/artifacts/ (the README's come from `NBBUILD_SCREENSHOTS=docs`).
"""
from __future__ import annotations

from pathlib import Path

import pytest

from browser_support import (ARTIFACTS, BADGE_CELLS as CELLS, FIT, KEPT, PARAMETER, RAW, RULE_CELLS, badge_is,
                             badge_states, cell, notebook_page, open_notebook, panel_node,
                             restart_and_load_ext, run, set_source, shots, write_notebook)

pytestmark = pytest.mark.timeout(240)

ROOT = Path(__file__).resolve().parent.parent
NOTEBOOK = "lab/badges.ipynb"
PIPELINE = "pipeline/pipeline.ipynb"


@pytest.fixture(scope="module")
def lab(jupyterlab):
    for folder in ("lab", "pipeline"):
        (jupyterlab.root / folder).mkdir(parents=True, exist_ok=True)
    write_notebook(jupyterlab.root / NOTEBOOK, CELLS)
    # the pipeline on less data: the same graph, drawn sooner
    text = (ROOT / "notebooks" / "pipeline.ipynb").read_text()
    assert "N_ROWS = 100_000" in text
    (jupyterlab.root / PIPELINE).write_text(text.replace("N_ROWS = 100_000", "N_ROWS = 5_000"))
    return jupyterlab


@pytest.fixture(scope="module")
def page(chromium, lab):
    """One page for the file's tests, on the notebook above, its cells run once."""
    yield from notebook_page(chromium, lab, NOTEBOOK, "lab-extension-console.log")


def open_panel(page):
    page.evaluate("() => window.jupyterapp.shell.activateById('nbbuild-panel')")
    panel = page.locator("#nbbuild-panel")
    panel.locator("svg g.node").first.wait_for(state="visible")
    return panel


def test_each_rule_cell_gets_a_badge(page):
    for i in RULE_CELLS:
        badge_is(page, i, "up to date")
    assert badge_states(page) == [None, None, "up to date", "up to date", "up to date", None]
    assert "fit ×5" in cell(page, FIT).locator(".nbbuild-badge").get_attribute("title")
    cell(page, KEPT).screenshot(path=str(ARTIFACTS / "lab-badges.png"))


def test_a_parameter_cell_run_makes_the_cells_reading_it_stale(page):
    set_source(page, PARAMETER, "threshold = 0.3")
    run(page, "notebook:run-cell", PARAMETER)
    stale = badge_is(page, KEPT, "stale")
    assert "global threshold changed" in stale.get_attribute("title")
    badge_is(page, FIT, "stale")
    assert badge_states(page)[RAW] == "up to date"
    page.locator(".jp-Notebook").screenshot(path=str(shots() / "lab-stale.png"))


def test_the_panel_draws_the_graph_and_build_brings_a_task_up_to_date(page):
    panel = open_panel(page)
    assert panel_node(panel, "fit ×5").count() == 1, "five calls of fit are one node"
    kept = panel_node(panel, "kept")
    assert "nbbuild-stale" in (kept.get_attribute("class") or "")
    kept.click()
    assert page.evaluate("() => window.jupyterapp.shell.currentWidget.content.activeCellIndex") == KEPT, \
        "clicking a task goes to its cell"
    page.locator("#nbbuild-panel .nbbuild-detail button[data-request='why']").click()
    why = page.locator("#nbbuild-panel .nbbuild-detail-output[data-request='why']")
    why.wait_for()
    assert "global threshold changed" in why.inner_text()
    page.locator("#nbbuild-panel .nbbuild-detail button[data-request='build']").click()
    badge_is(page, KEPT, "up to date")
    page.wait_for_function("""() => [...document.querySelectorAll('#nbbuild-panel svg g.node')].some(
        g => g.textContent.includes('kept') && g.classList.contains('nbbuild-up-to-date'))""")
    page.locator("#nbbuild-panel .nbbuild-detail button[data-request='value']").click()
    value = page.locator("#nbbuild-panel .nbbuild-detail-output[data-request='value']")
    value.wait_for()
    assert value.inner_text() == "kept = [4, 5, 6, 7, 8, 9]"
    # the collapsed calls open on click
    panel_node(panel, "fit ×5").click()
    page.wait_for_function("""() => [...document.querySelectorAll('#nbbuild-panel svg g.node')]
        .filter(g => /^fit\\(/.test(g.querySelector('text').textContent)).length === 5""")
    page.screenshot(path=str(shots() / "lab-panel.png"))


def test_after_a_restart_load_ext_alone_brings_the_badges_back(page):
    restart_and_load_ext(page, RULE_CELLS)


def test_the_pipelines_graph_fits_its_output_area(page, lab):
    open_notebook(page, lab, PIPELINE)
    # its cells up to the graph (not its Dask section after it)
    index = page.evaluate("""() => window.jupyterapp.shell.currentWidget.content.widgets.findIndex(
        c => c.model.sharedModel.getSource().startsWith('%build score_plot --graph'))""")
    run(page, "notebook:run-all-above", index)
    run(page, "notebook:run-cell", index)
    built = cell(page, index)
    graph = built.locator(".nbbuild-progress svg").first
    graph.wait_for(state="visible")
    output = built.locator(".jp-OutputArea-output").first
    g, o = graph.bounding_box(), output.bounding_box()
    assert g["x"] >= o["x"] - 0.5 and g["x"] + g["width"] <= o["x"] + o["width"] + 0.5, (g, o)
    assert g["y"] >= o["y"] - 0.5 and g["y"] + g["height"] <= o["y"] + o["height"] + 0.5, (g, o)
    built.screenshot(path=str(ARTIFACTS / "lab-pipeline-graph.png"))


def test_a_graph_bigger_than_its_output_zooms_pans_and_expands_a_rules_calls(page):
    """(on the pipeline the test above ran) Ctrl + wheel zooms in around the pointer, dragging pans,
    and `fit ×14` clicked draws fit's calls one by one."""
    built = page.locator(".jp-Notebook .jp-Cell", has_text="%build score_plot --graph").first
    frame = built.locator(".nbbuild-progress .nbbuild-zoom").first
    assert frame.get_attribute("data-zoomable") == "true", "the pipeline's graph is wider than its output"
    fitted = float(frame.get_attribute("data-scale"))
    box = frame.bounding_box()
    page.mouse.move(box["x"] + box["width"] / 2, box["y"] + box["height"] / 2)
    page.keyboard.down("Control")
    page.mouse.wheel(0, -300)
    page.keyboard.up("Control")
    page.wait_for_function("(f) => parseFloat(f.dataset.scale) > %f" % fitted, arg=frame.element_handle())
    svg = frame.locator("svg")
    before = svg.evaluate("(s) => s.style.transform")
    page.mouse.down()
    page.mouse.move(box["x"] + box["width"] / 2 + 60, box["y"] + box["height"] / 2 + 10, steps=4)
    page.mouse.up()
    assert svg.evaluate("(s) => s.style.transform") != before, "dragging did not pan"
    frame.locator("g.node", has=page.locator("text", has_text="fit ×14")).click()
    expanded = frame.locator('svg[data-expanded="fit"]')
    expanded.wait_for()
    assert expanded.evaluate("""(s) => [...s.querySelectorAll('g.node')]
        .filter(g => /^fit\\(/.test(g.querySelector('text').textContent)).length""") == 14
