"""The notebook's rules as a graph: a snapshot of each task's status and inputs, and its text forms
(`%nbbuild graph`, `%nbbuild status`). The widgets render the same snapshot.

Contract:
- `snapshot(build, rules, static, targets)` takes, for each task, its status (`Build.status`) and
  its inputs: what its last run read (`Build.inputs`: tasks and files), or, for a rule never run,
  the rules producing the names its cell reads (`static`: rule name -> rule names). Without
  targets it starts from every rule taking no arguments. A parametric rule's tasks are those
  built before (`Build.known_tasks`). Nothing runs and nothing is loaded.
- A node's label is what the user types: `clean` for a cell rule, `model(alpha=0.1)` for a call,
  `file data.csv` for a file.
- `tree(graph)` draws the graph as an indented tree, targets at the roots and inputs below; a
  task already drawn is not drawn again ("see above"). `table(graph)` is one line per task.
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any, Iterable

from ..files import short_path

__all__ = ["Node", "Graph", "snapshot", "tree", "table", "label", "size_text", "seconds_text"]


@dataclass(frozen=True)
class Node:
    id: str
    label: str
    kind: str                  # "task" or "file"
    state: str = ""            # up to date | stale | never built | failed | not stored ("" for files)
    reason: str = ""
    seconds: float | None = None
    size: int | None = None


@dataclass(frozen=True)
class Graph:
    nodes: dict[str, Node]
    inputs: dict[str, tuple[str, ...]]      # node id -> ids of what it reads, in order
    roots: tuple[str, ...]
    edges_known: dict[str, bool] = field(default_factory=dict)   # False: inputs guessed from the cell


_CALL = re.compile(r"\b([A-Za-z_][A-Za-z0-9_]*)\(\)")


def label(text: str) -> str:
    """`clean()` reads `clean`: a cell rule is named, not called (also inside a reason)."""
    return _CALL.sub(r"\1", text)


def snapshot(build: Any, static: dict[str, tuple[str, ...]], targets: Iterable[Any] | None = None) -> Graph:
    nodes: dict[str, Node] = {}
    inputs: dict[str, tuple[str, ...]] = {}
    known: dict[str, bool] = {}
    if targets is None:
        roots_tasks = []
        for rule in build.rules.values():
            try:
                roots_tasks.append(rule.task())
            except Exception:  # a rule with parameters: its calls built so far stand for it
                roots_tasks.extend(build.known_tasks(rule))
    else:
        roots_tasks = list(targets)
    todo = list(roots_tasks)
    while todo:
        task = todo.pop()
        if task.key in nodes:
            continue
        st = build.status(task)
        nodes[task.key] = Node(task.key, label(st.task), "task", st.state, label(st.reason), st.seconds, st.size)
        tasks, files = build.inputs(task)
        known[task.key] = bool(tasks or files) or st.state != "never built"
        if not known[task.key]:
            tasks = []
            for name in static.get(task.rule.name, ()):
                rule = build.rules.get(name)
                if rule is not None:
                    try:
                        tasks.append(rule.task())
                    except Exception:  # a parametric rule read by name: no task to show
                        pass
        ids = []
        for t in tasks:
            ids.append(t.key)
            todo.append(t)
        for path in files:
            fid = "file:" + path
            nodes.setdefault(fid, Node(fid, "file " + short_path(path), "file"))
            ids.append(fid)
        inputs[task.key] = tuple(dict.fromkeys(ids))
    read = {i for ids in inputs.values() for i in ids}
    order = [t.key for t in roots_tasks]
    roots = tuple(k for k in dict.fromkeys(order) if targets is not None or k not in read)
    return Graph(nodes, inputs, roots, known)


def size_text(size: int | None) -> str:
    if size is None:
        return "—"
    for unit, scale in (("GB", 1e9), ("MB", 1e6), ("KB", 1e3)):
        if size >= scale:
            return f"{size / scale:.1f} {unit}"
    return f"{size} B"


def seconds_text(seconds: float | None) -> str:
    if seconds is None:
        return "—"
    if seconds >= 90:
        return f"{int(seconds // 60)} min {int(seconds % 60)} s"
    return f"{seconds:.2f} s"


def _describe(node: Node) -> str:
    if node.kind == "file":
        return node.label
    said = node.state if node.state in ("up to date", "never built") else f"{node.state}: {node.reason}"
    extra = [seconds_text(node.seconds)] if node.seconds is not None else []
    if node.size is not None:
        extra.append(size_text(node.size))
    return f"{node.label} — {said}" + (f" ({', '.join(extra)})" if extra else "")


def tree(graph: Graph) -> str:
    lines: list[str] = []
    drawn: set[str] = set()

    def draw(nid: str, lead: str, branch: str) -> None:
        node = graph.nodes[nid]
        again = nid in drawn and graph.inputs.get(nid)
        lines.append(lead + branch + (f"{node.label} (see above)" if again else _describe(node)))
        if again:
            return
        drawn.add(nid)
        kids = graph.inputs.get(nid, ())
        below = lead + ("" if not branch else "    " if branch == "└── " else "│   ")
        for i, kid in enumerate(kids):
            draw(kid, below, "└── " if i == len(kids) - 1 else "├── ")

    for root in graph.roots:
        draw(root, "", "")
    return "\n".join(lines) if lines else "no rules yet: make one with %%rule"


def table(graph: Graph, order: list[str] | None = None) -> str:
    tasks = [n for n in graph.nodes.values() if n.kind == "task"]
    if order is not None:
        rank = {k: i for i, k in enumerate(order)}
        tasks.sort(key=lambda n: rank.get(n.id, len(rank)))
    if not tasks:
        return "no rules yet: make one with %%rule"
    rows = [("rule", "state", "last run", "size", "why")]
    for n in tasks:
        why = "" if n.state in ("up to date", "never built") else n.reason
        rows.append((n.label, n.state, seconds_text(n.seconds), size_text(n.size), why))
    widths = [max(len(r[i]) for r in rows) for i in range(4)]
    return "\n".join(("  ".join(c.ljust(w) for c, w in zip(r[:4], widths)) + "  " + r[4]).rstrip()
                     for r in rows)
