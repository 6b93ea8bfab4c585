"""Drawing the task graph (notebook/draw.py): DOT with states, sizes and targets; SVG from `dot`,
else pygraphviz's wheel, else Mermaid, never an exception."""
from __future__ import annotations

import os
import re
import shutil

import pytest

import nbbuild
from nbbuild.notebook import draw
from nbbuild.notebook.graph import DRAW_LIMIT, collapse, snapshot, tree


def plain_path_without_dot() -> str:
    return os.pathsep.join(d for d in os.environ.get("PATH", "").split(os.pathsep)
                           if d and not os.path.exists(os.path.join(d, "dot")))


@pytest.fixture
def graph(b, tmp_path):
    data = tmp_path / "data.csv"
    data.write_text("1,2,3")

    @b.rule
    def raw():
        return [int(x) for x in open(nbbuild.file(str(data))).read().split(",")]

    @b.rule
    def clean():
        return sorted(raw())

    @b.rule
    def model(alpha):
        return sum(clean()) * alpha

    @b.rule
    def report():
        return model(0.5)

    @b.rule
    def broken():
        raise ValueError("no")

    b.build(report)
    with pytest.raises(nbbuild.BuildError):
        b.build(broken)
    data.write_text("1,2,4")                      # raw and what reads it are stale now
    return snapshot(b, {}, [report.task(), broken.task()])


def node_lines(source: str) -> dict[str, str]:
    """DOT node statements by their label's first line (a file by its name)."""
    found = {}
    for m in re.finditer(r'^\s*(n\d+) \[label=(?:"([^"\\]*)|(\w+))[^\]]*\]', source, re.M):
        label = m.group(2) or m.group(3)     # DOT quotes only labels that need it
        found["file " + os.path.basename(label) if label.startswith("file ") else label] = m.group(0)
    return found


def test_one_node_per_task_and_file_with_an_edge_from_each_input(graph):
    g = draw.dot(graph)
    nodes = node_lines(g.source)
    assert set(nodes) == {"report", "model(0.5)", "clean", "raw", "broken", "file data.csv"}
    ids = {label: line.split()[0] for label, line in nodes.items()}
    edges = set(re.findall(r"^\s*(n\d+) -> (n\d+)", g.source, re.M))
    assert edges == {(ids["model(0.5)"], ids["report"]), (ids["clean"], ids["model(0.5)"]),
                     (ids["raw"], ids["clean"]), (ids["file data.csv"], ids["raw"])}


def test_colours_follow_state_and_targets_have_a_double_border(graph):
    nodes = node_lines(draw.dot(graph).source)
    assert "nbbuild-stale" in nodes["raw"] and draw.COLOURS["stale"][0] in nodes["raw"]
    assert "nbbuild-failed" in nodes["broken"] and draw.COLOURS["failed"][0] in nodes["broken"]
    assert "peripheries=2" in nodes["report"] and "peripheries=2" in nodes["broken"]
    assert "peripheries" not in nodes["clean"]
    assert re.search(r'label="model\(0\.5\)\\n\d+\.\d\d s · \d+ B"', nodes["model(0.5)"]) is None  # stale: no size
    live = draw.dot(graph, {k: "running" for k, n in graph.nodes.items() if n.label == "clean"}).source
    assert "nbbuild-running" in node_lines(live)["clean"]


def test_a_label_shows_the_last_run_time_and_the_stored_size(b):
    @b.rule
    def blob():
        return b"x" * 5000

    blob()
    source = draw.dot(snapshot(b, {}, [blob.task()])).source
    assert re.search(r'label="blob\\n\d+\.\d\d s · 5\.\d KB"', source)
    assert "nbbuild-up-to-date" in source


def assert_the_graph_svg(mime: str, svg: str) -> None:
    """The fixture's graph laid out: six boxes (five tasks, one file) and four arrows."""
    assert mime == "image/svg+xml" and "<svg" in svg and ">model(0.5)</text>" in svg
    assert svg.count('class="node') == 6 and svg.count('class="edge"') == 4


def test_with_dot_on_the_path_it_lays_out_the_svg(graph):
    if shutil.which("dot") is None:
        if os.environ.get("CI"):
            pytest.fail("Graphviz's dot is missing: `make test` installs it (apt-get install graphviz)")
        pytest.skip("Graphviz's dot is not installed here (make test installs it)")
    assert draw.renderer() == "dot"
    assert_the_graph_svg(*draw.render(graph))


def test_with_dot_off_the_path_the_bundled_graphviz_lays_it_out(graph, monkeypatch):
    monkeypatch.setenv("PATH", plain_path_without_dot())
    assert shutil.which("dot") is None
    assert draw.renderer() == "pygraphviz"
    assert_the_graph_svg(*draw.render(graph))


def test_with_no_graphviz_at_all_it_is_a_mermaid_diagram(graph, monkeypatch):
    monkeypatch.setenv("PATH", plain_path_without_dot())
    monkeypatch.setattr(draw, "_pygraphviz", lambda: None)
    assert draw.renderer() == "mermaid"
    mime, text = draw.render(graph)
    assert mime == "text/vnd.mermaid" and text.startswith("flowchart LR\n")
    ids = dict(re.findall(r'^    (n\d+)\(\[?"([^"<]*)', text, re.M))
    assert set(ids.values()) == {"report", "model(0.5)", "clean", "raw", "broken"}
    assert len(re.findall(r"^    n\d+ --> n\d+$", text, re.M)) == 4
    assert re.search(r"^    classDef stale fill:#fff1c2,stroke:#b26a00$", text, re.M)


def test_a_broken_graphviz_falls_back_to_mermaid_with_a_warning(graph, monkeypatch, tmp_path, caplog):
    fake = tmp_path / "bin"
    fake.mkdir()
    (fake / "dot").write_text("#!/bin/sh\necho 'dot: broken' >&2\nexit 3\n")
    (fake / "dot").chmod(0o755)
    monkeypatch.setenv("PATH", str(fake) + os.pathsep + plain_path_without_dot())
    assert draw.renderer() == "dot"
    mime, text = draw.render(graph)
    assert mime == "text/vnd.mermaid" and "flowchart LR" in text
    assert "laying out the graph with dot failed" in caplog.text


def test_a_big_graph_is_drawn_one_node_per_rule(b):
    @b.rule
    def leaf(i):
        return i

    @b.rule
    def top():
        return sum(leaf.map(range(DRAW_LIMIT + 50)))

    top()
    g = snapshot(b, {}, [top.task()])
    assert len(g.nodes) == DRAW_LIMIT + 51
    small, live = collapse(g, {leaf.task(3).key: "running"})
    assert live is None
    assert {n.label: n.state for n in small.nodes.values()} == {"top": "up to date",
                                                                f"leaf ×{DRAW_LIMIT + 50}": "running"}
    assert small.inputs == {"rule:top": ("rule:leaf",), "rule:leaf": ()} and small.roots == ("rule:top",)
    mime, svg = draw.render(g)
    assert mime == "image/svg+xml" and svg.count('class="node') == 2 and f"leaf ×{DRAW_LIMIT + 50}" in svg
    assert collapse(snapshot(b, {}, [leaf.task(1)]))[0].nodes.keys() == {leaf.task(1).key}   # small: as it is


def test_the_calls_of_a_rule_called_many_times_are_one_node_unless_asked_for(b):
    """A what-if section calls fit(...) 14 times: one node `fit ×14`, in the SVG, the Mermaid
    diagram and the text tree alike; the graph of `fit` itself draws every call."""
    @b.rule
    def fit(alpha, degree):
        return alpha * degree

    @b.rule
    def scores():
        return [fit(a, d) for a in range(7) for d in (1, 2)]

    scores()
    g = snapshot(b, {}, [scores.task()])
    grouped, _ = collapse(g)
    assert sorted(n.label for n in grouped.nodes.values()) == ["fit ×14", "scores"]
    assert grouped.inputs[scores.task().key] == ("rule:fit",)
    assert "fit ×14" in tree(grouped) and "fit(alpha=" not in tree(grouped)
    assert "fit ×14" in draw.mermaid(grouped)
    mime, svg = draw.render(g)
    assert svg.count('class="node') == 2 if mime == "image/svg+xml" else "fit ×14" in svg
    every, _ = collapse(g, expand=["fit"])
    assert len(every.nodes) == 15
    few = [fit.task(a, 1) for a in range(3)]           # three calls: drawn one by one
    assert set(collapse(snapshot(b, {}, few))[0].nodes) == {t.key for t in few}


def test_the_svg_in_a_widget_fits_the_output_area(graph):
    html = draw.html(graph)          # laid out by dot, else pygraphviz's wheel (a dependency here)
    width = float(re.search(r'<svg[^>]*\swidth="([\d.]+)pt"', html)[1])
    assert html.startswith('<div style="max-width:100%;overflow:auto">')
    assert f"width:100%;max-width:{width:.0f}pt;min-width:{width / 2:.0f}pt;height:auto" in html
