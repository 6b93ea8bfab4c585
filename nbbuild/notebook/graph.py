"""The notebook's rules as a graph: a snapshot of each task's status and inputs, and its text forms
(`%nbbuild graph`, `%nbbuild status`). The widgets render the same snapshot.

Contract:
- `snapshot(build, static, targets)` takes, for each task, its status (`Build.statuses`, for all
  tasks at once) and its inputs: what its last run read (`Build.inputs`: tasks and files), or,
  when that is nothing known (a rule never run), the rules producing the names its cell reads
  (`static`: rule name -> rule names; `edges_known` is then False). Without
  targets it starts from every rule taking no arguments. A parametric rule's tasks are those
  built before (`Build.known_tasks`). Nothing runs and nothing is loaded.
- A node's label is what the user types: `clean` for a cell rule, `model(alpha=0.1)` for a call,
  `file data.csv` for a file.
- `collapse(graph, live, expand=())`: the calls of a rule called more than `GROUP_LIMIT` times
  as one node ("fit ×14"), but for the rules named in `expand`; a graph of more than `DRAW_LIMIT`
  tasks, one node per rule ("leaf ×10,000"). A group takes the most urgent state among its tasks
  (live states first), their run times and sizes added up, an edge where any of its tasks read
  one of the other's. What is drawn or printed stays readable and quick to lay out.
- `tree(graph)` draws the graph as an indented tree, targets at the roots and inputs below; a
  task already drawn is not drawn again ("see above"). `table(graph)` is one line per task.
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Iterable

from ..engine.files import short_path
from ..report.formatting import seconds_text, size_text

if TYPE_CHECKING:
    from ..build import Build
    from ..engine.task import Task

__all__ = ["Node", "Graph", "snapshot", "collapse", "tree", "table", "label", "size_text", "seconds_text",
           "DRAW_LIMIT", "GROUP_LIMIT", "TITLES"]

DRAW_LIMIT = 500
GROUP_LIMIT = 3          # a rule called more often than this is drawn as one node, `fit ×14`
# the state a rule's node takes when its tasks differ: the first of these any of them has
_URGENCY = ("running", "failed", "skipped", "stale", "never built", "not stored", "ran", "reused", "up to date")


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
# rule name -> how messages name it (state.NotebookState keeps it): a cell rule named for the
# version it binds, `df` or `df (cell 4)`, not by its rule name `df_1f3a9c2e`
TITLES: dict[str, str] = {}


def label(text: str) -> str:
    """`clean()` reads `clean`: a cell rule is named, not called (also inside a reason), by its
    title where it has one."""
    return _CALL.sub(lambda m: TITLES.get(m[1], m[1]), text)


def snapshot(build: Build, static: dict[str, tuple[str, ...]], targets: Iterable[Any] | None = None) -> Graph:
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
    tasks_seen: dict[str, Task] = {}
    files_seen: dict[str, str] = {}
    while todo:              # first what each task read (cheap: its newest trace), then every status at once
        task = todo.pop()
        if task.key in tasks_seen:
            continue
        tasks_seen[task.key] = task
        tasks, files = build.inputs(task)
        known[task.key] = bool(tasks or files)
        if not known[task.key]:
            tasks = []
            for name in static.get(task.rule.name, ()):
                dep = build.rules.get(name)
                if dep is not None:
                    try:
                        tasks.append(dep.task())
                    except Exception:  # a parametric rule read by name: no task to show
                        pass
        ids = []
        for t in tasks:
            ids.append(t.key)
            todo.append(t)
        for path in files:
            files_seen.setdefault("file:" + path, path)
            ids.append("file:" + path)
        inputs[task.key] = tuple(dict.fromkeys(ids))
    for task, st in zip(tasks_seen.values(), build.statuses(list(tasks_seen.values()))):
        nodes[task.key] = Node(task.key, label(st.task), "task", st.state, label(st.reason), st.seconds, st.size)
    for fid, path in files_seen.items():
        nodes[fid] = Node(fid, "file " + short_path(path), "file")
    read = {i for ids in inputs.values() for i in ids}
    order = [t.key for t in roots_tasks]
    roots = tuple(k for k in dict.fromkeys(order) if targets is not None or k not in read)
    return Graph(nodes, inputs, roots, known)


def collapse(graph: Graph, live: dict[str, str] | None = None,
             expand: Iterable[str] = ()) -> tuple[Graph, dict[str, str] | None]:
    """(graph, live) with the calls of a rule called more than `GROUP_LIMIT` times as one node
    (`fit ×14`), but for the rules named in `expand`; a graph of more than `DRAW_LIMIT` tasks
    with one node for every rule. Live states of grouped tasks are folded into their node."""
    tasks = [n for n in graph.nodes.values() if n.kind == "task"]
    rule = {n.id: n.id.partition("/")[0] for n in tasks}
    counts: dict[str, int] = {}
    for r in rule.values():
        counts[r] = counts.get(r, 0) + 1
    every = len(tasks) > DRAW_LIMIT
    open_ = set(expand)
    grouped = {r for r, n in counts.items() if every or (n > GROUP_LIMIT and r not in open_)}
    if not grouped:
        return graph, live
    live = live or {}
    rule_of = {n.id: ("rule:" + rule[n.id] if rule[n.id] in grouped else n.id) for n in tasks}
    members: dict[str, list[Node]] = {}
    for n in tasks:
        members.setdefault(rule_of[n.id], []).append(n)
    nodes: dict[str, Node] = {}
    for rid, group in members.items():
        if not rid.startswith("rule:"):
            nodes[rid] = group[0]
            continue
        states = {live.get(n.id) or n.state for n in group}
        state = next((s for s in _URGENCY if s in states), group[0].state)
        seconds = [n.seconds for n in group if n.seconds is not None]
        sizes = [n.size for n in group if n.size is not None]
        name = group[0].label.partition("(")[0]
        nodes[rid] = Node(rid, f"{name} ×{len(group):,}" if len(group) > 1 else group[0].label, "task", state,
                          "", sum(seconds) if seconds else None, sum(sizes) if sizes else None)
    inputs: dict[str, tuple[str, ...]] = {}
    for nid, ids in graph.inputs.items():
        own = rule_of.get(nid)
        if own is None:
            continue
        found = list(inputs.get(own, ()))
        for i in ids:
            src = rule_of.get(i, i)
            if src != own and src not in found:
                found.append(src)
                if i in graph.nodes and i not in rule_of:
                    nodes.setdefault(i, graph.nodes[i])     # a file read
        inputs[own] = tuple(found)
    roots = tuple(dict.fromkeys(rule_of.get(r, r) for r in graph.roots))
    known = {k: all(graph.edges_known.get(n.id, True) for n in members[k]) for k in inputs}
    left = {k: v for k, v in live.items() if k in nodes and not k.startswith("rule:")} or None
    return Graph(nodes, inputs, roots, known), left



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
