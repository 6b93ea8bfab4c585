"""What `%nbbuild` shows, nothing run: the status table, the graph (SVG in a kernel, drawn by
draw.py; a text tree elsewhere), the store and its bounds, the metrics, the dashboard.

Contract: each function takes the NotebookState and the command's words; a kernel (`state.rich`)
gets widgets and SVG with their text form beside them, any other shell the text form printed.
Bad input is one UsageError line.
"""
from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any

from IPython.core.error import UsageError
from IPython.display import display

from ..errors import NbbuildError
from ..store.eviction import policy, size
from .draw import render
from .graph import collapse, size_text, table, tree
from .lines import STORE_USAGE
from .state import NotebookState
from .widgets import dashboard as board
from .widgets import metrics_text, metrics_view, show

if TYPE_CHECKING:
    from ..build import Build

__all__ = ["status", "graph", "store", "metrics", "store_text", "sweep"]


def status(state: NotebookState) -> None:
    """`%nbbuild status`: one row per rule taking no arguments, in definition order."""
    plain = [r for name, r in state.build.rules.items() if name not in state.parametric]
    print(table(state.graph(), [r.task().key for r in plain]))



def store(state: NotebookState, words: list[str], options: Any) -> None:
    """`%nbbuild store ...`: set the bounds, gc or clear, then say where the store stands. Every
    value given is checked before any is set: a bad one is one line, and nothing changed."""
    b = state.build
    usage = f"usage: {STORE_USAGE}"
    if len(words) > 1 or (words and words[0] not in ("gc", "clear")):
        raise UsageError(f"%nbbuild store: {' '.join(words)!r}? {usage}")
    action = words[0] if words else None
    if options.foreign and action != "gc":
        raise UsageError("%nbbuild store: --foreign goes with gc only: %nbbuild store gc --foreign")
    if options.shared_readonly and options.shared is None:
        raise UsageError("%nbbuild store: --shared-readonly goes with --shared URL")
    if options.shared == "":
        raise UsageError(f"%nbbuild store: --shared needs a location (s3://bucket/prefix, a folder). {usage}")
    try:
        quota = None if options.quota is None else size(options.quota, "--quota")
        min_free = None if options.min_free is None else size(options.min_free, "--min-free")
        eviction = None if options.eviction is None else policy(options.eviction, "--eviction")
        if options.shared is not None:
            b.share(options.shared, options.shared_readonly)
        if quota is not None:
            b.set_quota(None if quota == math.inf else int(quota))
        if min_free is not None:
            b.store.min_free = min_free  # type: ignore[assignment]  # the setter takes a size (eviction.Bounds)
        if eviction is not None:
            b.store.policy = eviction
    except NbbuildError as e:
        raise UsageError(f"%nbbuild store: {e}") from None
    if action is not None:
        print(sweep(b, action, options.foreign))
    print(store_text(b))


def sweep(b: Build, action: str, others: bool = False) -> str:
    """Run `gc`, `gc --foreign` or `clear` and say what went (`%nbbuild store`, `nbbuild store`)."""
    if action == "gc" and others:
        n, size = b.gc_foreign()
        return (f"removed {n} entries signed by other keys ({size_text(size)})" if n else
                "no entries signed by other keys: nothing removed")
    if action == "gc":
        return f"evicted {b.gc()} values down to the quota; pruned old traces"
    values, size, traces = b.store.own_entries()
    b.clear()
    return (f"store cleared: deleted {values} values ({size_text(size)}) and {traces} traces signed with your "
            "key (entries of other keys are kept); every rule runs again when built")


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
    # the calls of a rule asked for by name are drawn one by one; other rules' many calls, as one
    opened: set[str] = {n for t in targets or ()
                        if (n := getattr(t, "name", None) or getattr(getattr(t, "rule", None), "name", ""))}
    text = tree(collapse(g, expand=opened)[0])
    if not state.rich:
        if dashboard:
            text += "\n\n" + metrics_text(state.build.metrics())
        print(text)
        return
    if dashboard:
        m = state.build.metrics()
        show(board(state.graph_html(targets, opened), m), text + "\n\n" + metrics_text(m), view="dashboard")
        return
    mime, data = render(g, expand=opened)
    display({mime: data, "text/plain": text}, raw=True, metadata={"nbbuild": {"view": "graph"}})


def shared_text(b: Build) -> str:
    """Where the shared tier stands (`nbbuild store info --shared`, `%nbbuild store`)."""
    found = b.shared_survey()
    return "\n".join([
        f"shared   {b.shared}",
        f"size     {size_text(found.volume)} in {len(found.values)} values",
        f"traces   {found.traces} in {len(found.packs)} packs",
    ])


def shared_sweep(b: Build, quota: Any) -> str:
    """`nbbuild store gc --shared`: evict the shared tier to its quota, merge its packs."""
    values, size, packs = b.shared_gc(quota)
    evicted = f"evicted {values} values ({size_text(size)})" if quota is not None else "no quota: nothing evicted"
    return f"{evicted}; merged {packs} packs into one" if packs else f"{evicted}; packs already merged"


def store_text(b: Build) -> str:
    """Where the store stands, a line a figure (`%nbbuild store`, `nbbuild store`)."""
    st, sharing = b.store.stats(), b.store.sharing
    size, quota = st["size_bytes"], st["quota_bytes"]
    usage = f"{size_text(size)} of {size_text(quota)} ({100 * size / quota:.0f}%)" if quota else \
        f"{size_text(size)} (no quota)"
    asked = st["hits"] + st["misses"]
    rate = f" ({100 * st['hits'] / asked:.0f}% hits)" if asked else ""
    trouble = "".join(f"; {st[k]} {k.replace('_', ' ')}" for k in ("damaged", "write_failures") if st.get(k))
    return "\n".join([
        f"store    {st['path']}",
        f"size     {usage}",
        f"quota    {b.store.quota_source}",
        f"values   {st['values']} ({st['value_files']} as files), {st['traces']} traces",
        f"reuse    {st['hits']} hits, {st['misses']} misses{rate}, {st['evictions']} evictions ({st['policy']})",
        f"traffic  {size_text(st['bytes_written'])} written, {size_text(st['bytes_read'])} read{trouble}",
        f"disk     {size_text(st['free_bytes'])} free, floor {size_text(st['min_free_bytes'] or 0)}",
    ] + ([f"shared   {b.shared}{' (read-only)' if sharing is not None and sharing.readonly else ''}"]
         if b.shared else []))
