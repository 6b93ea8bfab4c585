"""What `%nbbuild` shows, nothing run: the status table, the graph (SVG in a kernel, drawn by
draw.py; a text tree elsewhere), the store and its bounds, the metrics, the dashboard.

Contract: each function takes the NotebookState and the command's words; a kernel (`state.rich`)
gets widgets and SVG with their text form beside them, any other shell the text form printed.
Bad input is one UsageError line.
"""
from __future__ import annotations

from IPython.core.error import UsageError
from IPython.display import display

from ..errors import NbbuildError
from ..eviction import POLICIES as EVICTIONS
from ..eviction import parse_size
from .draw import render
from .graph import collapse, size_text, table, tree
from .state import NotebookState
from .widgets import dashboard as board
from .widgets import metrics_text, metrics_view, show

__all__ = ["status", "graph", "store", "metrics"]


def status(state: NotebookState) -> None:
    """`%nbbuild status`: one row per rule taking no arguments, in definition order."""
    plain = [r for name, r in state.build.rules.items() if name not in state.parametric]
    print(table(state.graph(), [r.task().key for r in plain]))



def store(state: NotebookState, words: list[str]) -> None:
    """`%nbbuild store ...`: set the bounds, gc or clear, then say where the store stands."""
    b = state.build
    action, it = None, iter(words)
    usage = "usage: %nbbuild store [--quota SIZE] [--min-free SIZE] [--eviction gdsf|lru] [gc | clear]"
    for w in it:
        option, _, given = w.partition("=")
        if option in ("--quota", "--min-free", "--eviction"):
            value = given or next(it, "")
            try:
                if option == "--quota":
                    b.set_quota(value)
                elif option == "--min-free":
                    b.store.min_free = parse_size(value) or 0
                elif value.lower() in EVICTIONS:
                    b.store.policy = value.lower()
                else:
                    raise ValueError(f"eviction policy {value!r} not known: use gdsf or lru")
            except (ValueError, NbbuildError) as e:
                raise UsageError(f"%nbbuild store: {e}") from None
        elif w in ("gc", "clear") and action is None:
            action = w
        else:
            raise UsageError(f"%nbbuild store: {w!r}? {usage}")
    if action == "gc":
        print(f"evicted {b.gc()} values")
    elif action == "clear":
        b.clear()
        print("store cleared: every rule runs again when built")
    stats = b.store.stats()
    print(f"store {stats['path']}: {_usage(stats)}; {stats['values']} values ({stats['value_files']} as files), "
          f"{stats['traces']} traces\n"
          f"quota {b.store.quota_source}; eviction {stats['policy']}; disk {size_text(stats['free_bytes'])} free, "
          f"floor {size_text(stats['min_free_bytes'] or 0)}")


def metrics(state: NotebookState) -> None:
    """`%nbbuild metrics`: a widget in a kernel, text elsewhere."""
    m = state.build.metrics()
    if not state.rich:
        print(metrics_text(m))
        return
    show(metrics_view(m), metrics_text(m), view="metrics")


def graph(state: NotebookState, targets: list | None, dashboard: bool) -> None:
    """The graph as SVG (or Mermaid) in a kernel, as a text tree elsewhere; with `dashboard`,
    beside the metrics."""
    g = state.graph(targets)
    text = tree(collapse(g)[0])
    if not state.rich:
        if dashboard:
            text += "\n\n" + metrics_text(state.build.metrics())
        print(text)
        return
    if dashboard:
        m = state.build.metrics()
        show(board(state.graph_html(targets), m), text + "\n\n" + metrics_text(m), view="dashboard")
        return
    mime, data = render(g)
    display({mime: data, "text/plain": text}, raw=True, metadata={"nbbuild": {"view": "graph"}})


def _usage(stats: dict) -> str:
    size, quota = stats["size_bytes"], stats["quota_bytes"]
    if not quota:
        return f"{size_text(size)} (no quota)"
    return f"{size_text(size)} of {size_text(quota)} ({100 * size / quota:.0f}%)"
