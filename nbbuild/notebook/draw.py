"""The task graph drawn: DOT source built with the graphviz package, laid out as SVG by whatever
the machine has, else a Mermaid diagram.

Contract:
- `dot(graph, live=None)` is a `graphviz.Digraph`: one node per task (its label, as the user
  types it), one per file read, an edge from each input to what reads it; fill colours by state
  (`COLOURS`), a second line with the last run time and stored size, targets drawn with a double
  border. `live` (task id -> state) overrides states while a build runs: "running", "ran",
  "reused", "failed", "skipped".
- `render(graph, live=None, expand=()) -> (mime, text)`: collapsed first (graph.collapse: a rule's
  many calls one node, a big graph one node per rule), then ("image/svg+xml", svg) laid out by the `dot` program
  when it is on the PATH, else by pygraphviz (its manylinux wheel bundles the Graphviz libraries);
  else ("text/vnd.mermaid", diagram), which JupyterLab ≥ 4.1 draws. Never raises for a graph.
- `mermaid(graph, live=None)` is that diagram. `renderer()` names what `render` will use.
- `html(graph, live=None, expand=())` is the graph for an HTML widget: inline SVG that fits the
  output area's width (`fit`: shrunk to it, down to half size, then scrolled), or the text tree
  where only Mermaid is to be had (a widget does not draw Mermaid). `expand`: graph.collapse's.
"""
from __future__ import annotations

import contextlib
import functools
import html as _html
import logging
import os
import re
import shutil
import sys
import tempfile
from typing import Any, Iterator

import graphviz

from .graph import Graph, Node, collapse, seconds_text, size_text, tree

__all__ = ["COLOURS", "dot", "mermaid", "render", "renderer", "html", "fit"]

log = logging.getLogger("nbbuild")

COLOURS = {                      # state -> (fill, border)
    "up to date": ("#d9f2d9", "#2e7d32"),
    "reused": ("#d9f2d9", "#2e7d32"),
    "ran": ("#b9e6b9", "#1b5e20"),
    "stale": ("#fff1c2", "#b26a00"),
    "running": ("#cfe3ff", "#1565c0"),
    "failed": ("#ffd6d6", "#c62828"),
    "skipped": ("#f0d9d9", "#8e4a4a"),
    "never built": ("#ececec", "#757575"),
    "not stored": ("#ece3f5", "#6a4a8e"),
}
_FILE = ("#ffffff", "#9e9e9e")


def _state(node: Node, live: dict[str, str] | None) -> str:
    return (live or {}).get(node.id) or node.state


def _detail(node: Node) -> str:
    parts = [seconds_text(node.seconds)] if node.seconds is not None else []
    if node.size is not None:
        parts.append(size_text(node.size))
    return " · ".join(parts)


def _ids(graph: Graph) -> dict[str, str]:
    return {nid: f"n{i}" for i, nid in enumerate(graph.nodes)}


def dot(graph: Graph, live: dict[str, str] | None = None) -> graphviz.Digraph:
    g = graphviz.Digraph("nbbuild", graph_attr={"rankdir": "LR", "bgcolor": "transparent", "nodesep": "0.25",
                                                "ranksep": "0.45", "fontname": "Helvetica"},
                         node_attr={"shape": "box", "style": "rounded,filled", "fontname": "Helvetica",
                                    "fontsize": "11", "margin": "0.12,0.05"},
                         edge_attr={"color": "#8a8a8a", "arrowsize": "0.6"})
    ids, roots = _ids(graph), set(graph.roots)
    for nid, node in graph.nodes.items():
        if node.kind == "file":
            g.node(ids[nid], graphviz.escape(node.label), shape="note", fillcolor=_FILE[0], color=_FILE[1], fontsize="10",
                   tooltip=node.label)
            continue
        state = _state(node, live)
        fill, border = COLOURS.get(state, COLOURS["never built"])
        detail = _detail(node)
        text = graphviz.escape(node.label) + (f"\\n{detail}" if detail else "")   # DOT's own line break
        attrs = {"fillcolor": fill, "color": border, "tooltip": f"{node.label}: {state}",
                 "class": "nbbuild-" + state.replace(" ", "-")}
        if nid in roots:
            attrs.update(peripheries="2", penwidth="1.6")
        g.node(ids[nid], text, **attrs)
    for nid, inputs in graph.inputs.items():
        for src in inputs:
            if src in ids:
                g.edge(ids[src], ids[nid])
    return g


def mermaid(graph: Graph, live: dict[str, str] | None = None) -> str:
    ids, roots = _ids(graph), set(graph.roots)
    lines = ["flowchart LR"]
    for nid, node in graph.nodes.items():
        text = node.label + (f"<br/>{_detail(node)}" if node.kind == "task" and _detail(node) else "")
        text = text.replace('"', "#quot;")
        shape = ('[/"', '"/]') if node.kind == "file" else ('(["', '"])') if nid in roots else ('("', '")')
        lines.append(f"    {ids[nid]}{shape[0]}{text}{shape[1]}")
    for nid, inputs in graph.inputs.items():
        lines += [f"    {ids[src]} --> {ids[nid]}" for src in inputs if src in ids]
    used = {}
    for nid, node in graph.nodes.items():
        if node.kind == "task":
            state = _state(node, live)
            cls = re.sub(r"\W", "_", state)
            used[cls] = COLOURS.get(state, COLOURS["never built"])
            lines.append(f"    class {ids[nid]} {cls}")
    lines += [f"    classDef {cls} fill:{fill},stroke:{border}" for cls, (fill, border) in used.items()]
    return "\n".join(lines)


@functools.lru_cache(maxsize=1)
def _pygraphviz() -> Any:
    try:
        import pygraphviz
        return pygraphviz
    except Exception:  # not installed, or its bundled libraries cannot load here
        return None


@contextlib.contextmanager
def _quiet_fd2() -> Iterator[None]:
    """The Graphviz libraries in pygraphviz's wheel (their fontconfig) write warnings to file
    descriptor 2, which a kernel shows in the cell: they are logged instead."""
    try:
        sys.stderr.flush()
        saved = os.dup(2)
    except (OSError, ValueError, AttributeError):
        yield
        return
    with tempfile.TemporaryFile() as sink:
        os.dup2(sink.fileno(), 2)
        try:
            yield
        finally:
            os.dup2(saved, 2)
            os.close(saved)
            sink.seek(0)
            said = sink.read().decode("utf-8", "replace").strip()
            if said:
                log.debug("nbbuild: graphviz said: %s", said)


def renderer() -> str:
    """"dot", "pygraphviz" or "mermaid": what `render` will use on this machine now."""
    if shutil.which("dot"):
        return "dot"
    return "pygraphviz" if _pygraphviz() is not None else "mermaid"


def render(graph: Graph, live: dict[str, str] | None = None, expand: Any = ()) -> tuple[str, str]:
    graph, live = collapse(graph, live, expand)
    source = dot(graph, live).source
    way = renderer()
    try:
        if way == "dot":
            return "image/svg+xml", graphviz.Source(source).pipe(format="svg", encoding="utf-8")
        if way == "pygraphviz":
            with _quiet_fd2():
                svg = _pygraphviz().AGraph(string=source).draw(format="svg", prog="dot")
            return "image/svg+xml", svg.decode("utf-8") if isinstance(svg, bytes) else svg
    except Exception:  # a broken Graphviz install: the diagram is still worth showing
        log.warning("nbbuild: laying out the graph with %s failed; showing it as Mermaid", way, exc_info=True)
    return "text/vnd.mermaid", mermaid(graph, live)


def html(graph: Graph, live: dict[str, str] | None = None, expand: Any = ()) -> str:
    mime, text = render(graph, live, expand)
    if mime == "image/svg+xml":
        return f'<div style="{_FRAME}">{fit(text[text.find("<svg"):])}</div>'
    return f"<pre>{_html.escape(tree(collapse(graph, expand=expand)[0]))}</pre>"


# A drawing wider than the output area is shrunk to its width, down to half its size; wider
# still, it keeps half its size and the frame scrolls (no script runs in a widget's HTML to zoom)
_FRAME = "max-width:100%;overflow:auto"
_SIZE = re.compile(r'<svg\b([^>]*?)\swidth="([\d.]+)pt"\s+height="([\d.]+)pt"')


def fit(svg: str) -> str:
    """Graphviz's SVG drawn at most as wide as its container (height in proportion)."""
    found = _SIZE.search(svg)
    if found is None:
        return svg
    width, height = float(found[2]), float(found[3])
    style = f'style="width:100%;max-width:{width:.0f}pt;min-width:{width / 2:.0f}pt;height:auto"'
    return svg[:found.start()] + f'<svg{found[1]} width="{width:.0f}pt" height="{height:.0f}pt" {style}' + \
        svg[found.end():]
