"""ipywidgets views of a build, for a Jupyter kernel. They render snapshots that the Build exposes
(`Build.progress()`, `Build.metrics()`, the graph snapshot) and never touch the store.

Contract:
- `BuildView(interval, snapshot, draw)` is a build watcher (`Build.watch`). At each top-level
  build it displays a box (CSS class `nbbuild-progress`): a progress bar (tasks checked of those known), the task
  running now with its elapsed time, and rows per task (running, ran, reused, failed, skipped)
  with durations; only the running and the slowest tasks once a build has more than
  `progress.ROW_LIMIT`. A ticker thread redraws it, from its own thread (a one-target build may
  run its body on the kernel's thread), `first` seconds in and then every `interval` seconds: the
  text each time, the bar at most every `bar_every` seconds, and only what changed. Each widget
  message costs the build's thread GIL hand-offs in the kernel (BENCHMARKS.md), hence few:
  the updates reach the front end while the cell runs. Its place is first in the cell's output,
  before anything the build shows: it is taken (a plain-text display) when a rule's body is about
  to show something (`place()`, which the notebook's capture calls, from any thread), or by the
  box at the first tick. A build over before then was never seen running: it sends no widget at
  all, and shows the settled view as HTML (the report's line, the rows folded below it, the graph;
  `parts["settled"]`) in its place, or, when nothing took it (a build that only reused values),
  as one display then. The ticker is one thread per view, kept between builds (starting one per
  build was a large share of a reused cell's cost); each build's ticks run in the context of
  the cell that started it, and it ends after `IDLE` seconds without a build. When the build
  ends no tick pushes any more (under the view's lock), then the box settles into the report's
  one line (the rows folded below it), and the display's plain-text form becomes that line.
  Tasks are named as the user types them (`clean`).
- `graph_for(targets)` asks for a live graph too, for the next build only: `snapshot(targets)`
  (a graph.Graph, taken on the build's thread when it starts and again when it ends) is drawn by
  `draw(graph, live)` with the states the build's progress gives, at most once a second, while
  the progress lists every task (`progress.ROW_LIMIT`); a big graph is drawn by rule (graph.collapse).
- `metrics_view(metrics)` and `dashboard(graph_svg, metrics)` are widgets with a plain-text
  form; `show(widget, text)` displays one with that text beside it.
"""
from __future__ import annotations

import contextvars
import html
import logging
import queue
import threading
import time
from typing import Any, Callable

import ipywidgets as w
from ipywidgets.widgets.widget_int import ProgressStyle
from ipywidgets.widgets.widget_string import HTMLStyle
from IPython.display import display

from ..engine.state import Outcome
from ..report.console import line
from ..report.listeners import Listener
from ..report.formatting import seconds_text as _secs, size_text as _size
from ..report.metrics import Metrics
from ..report.progress import Progress
from .graph import label

__all__ = ["BuildView", "metrics_view", "metrics_text", "dashboard", "show"]

log = logging.getLogger("nbbuild")
IDLE = 60.0     # seconds without a build after which the view's ticker thread ends (started again when needed)
_SHARED: dict[str, w.Widget] | None = None


def _share() -> dict[str, w.Widget]:
    global _SHARED
    _SHARED = {"bar": w.Layout(width="320px"), "bar_style": ProgressStyle(), "text": w.Layout(),
               "text_style": HTMLStyle(), "box": w.Layout(align_items="flex-start")}
    return _SHARED
_MARK = {Outcome.RUNNING: "▶", Outcome.EXECUTED: "✔ ran", Outcome.VERIFIED: "↺ reused",
         Outcome.CONSTRUCTED: "↺ reused (older)", Outcome.FAILED: "✘ failed", Outcome.SKIPPED: "– skipped"}
_LIVE = {Outcome.EXECUTED: "ran", Outcome.VERIFIED: "reused", Outcome.CONSTRUCTED: "reused"}   # draw.py's words
_STYLE = ("<style>.nbbuild-rows{border-collapse:collapse;font-size:12px;margin-top:2px}"
          ".nbbuild-rows td{padding:1px 10px 1px 0;white-space:nowrap;line-height:1.35}"
          # an HTML widget's line height is a widget row's (28 px): tables and notes want text's
          ".nbbuild-progress .widget-html-content,.nbbuild-metrics .widget-html-content{line-height:1.35}"
          ".nbbuild-metrics .widget-html-content{white-space:nowrap}"
          ".nbbuild-rows td.s{text-align:right;font-variant-numeric:tabular-nums}"
          ".nbbuild-running{color:#1565c0}.nbbuild-failed,.nbbuild-skipped{color:#c62828}"
          ".nbbuild-scroll{max-height:16em;overflow-y:auto}</style>")


def _bundle(widget: w.Widget, text: str) -> dict:
    """The widget with `text` as its plain-text form (what nbconvert, a terminal or an output
    comparison sees)."""
    return {"text/plain": text, "application/vnd.jupyter.widget-view+json":
            {"version_major": 2, "version_minor": 0, "model_id": widget.model_id}}


def show(widget: w.Widget, text: str, **metadata: Any) -> Any:
    """Display the widget with `text` as its plain-text form; returns the display handle."""
    return display(_bundle(widget, text), raw=True, display_id=True,
                   metadata={"nbbuild": metadata} if metadata else None)


def rows_html(p: Progress) -> str:
    rows = list(p.running) + list(p.rows)
    body = "".join(f'<tr class="nbbuild-{r.outcome}"><td>{_MARK.get(r.outcome, r.outcome)}</td>'
                   f"<td>{html.escape(label(r.task))}</td><td class=s>{_secs(r.seconds)}</td></tr>" for r in rows)
    head = "" if p.complete else (f"<div>{p.checked} tasks checked; the {len(p.rows)} slowest "
                                  f"{'and those running ' if p.running else ''}shown</div>")
    return f'{_STYLE}{head}<div class="nbbuild-scroll"><table class="nbbuild-rows">{body}</table></div>'


class BuildView(Listener):
    def __init__(self, interval: float = 0.5, snapshot: Callable[[list], Any] | None = None,
                 draw: Callable[[Any, dict | None], str] | None = None, first: float = 0.25,
                 bar_every: float = 1.0):
        self.interval, self.first, self.bar_every = interval, first, bar_every
        self.snapshot, self.draw = snapshot, draw
        self._graph_targets: list | None = None
        self._lock = threading.Lock()     # one push at a time: widget syncs are not thread-safe
        self._builds: queue.SimpleQueue = queue.SimpleQueue()    # (build, parts, context) to tick for
        self._spawn = threading.Lock()    # the ticker thread is started, or ends, under it
        self._ticker: threading.Thread | None = None
        self.last: dict[str, Any] | None = None    # the widgets of the last build, for tests

    def graph_for(self, targets: list) -> None:
        self._graph_targets = targets

    def started(self, build: Any) -> None:
        parts: dict[str, Any] = {"sent": {}, "graph": "", "graph_at": 0.0, "targets": self._graph_targets,
                                 "snapshot": None, "over": False, "stop": threading.Event(), "at": time.monotonic()}
        self._graph_targets = None
        if parts["targets"] is not None and self.snapshot is not None and self.draw is not None:
            try:
                parts["snapshot"] = self.snapshot(parts["targets"])    # here, on the build's thread
            except Exception:  # the graph is a bonus: the build view goes on without it
                log.warning("nbbuild: the task graph could not be read", exc_info=True)
        # its place, first in the cell's output, is taken when something is to be shown (place())
        parts["handle"] = None
        # the ticks resolve the kernel's output routing (context variables) as the cell does
        parts["context"] = contextvars.copy_context()
        self.last = parts
        with self._spawn:
            self._builds.put((build, parts, parts["context"]))
            if self._ticker is None:
                self._ticker = threading.Thread(target=self._serve, name="nbbuild-view", daemon=True)
                self._ticker.start()

    def place(self) -> None:
        """Something of the running build is about to be shown (a rule's body prints): the view
        takes its place first, in the cell's output."""
        parts = self.last
        if parts is None or parts["handle"] is not None or parts["over"]:
            return
        with self._lock:
            if parts["handle"] is None and not parts["over"]:
                # in the context the build started in: the cell's output routing (from any
                # thread), and outside the capture of the body that calls (not its output)
                try:
                    parts["context"].copy().run(self._take_place, parts)
                except Exception:  # the view is a bonus: the body's own output must go on
                    log.debug("nbbuild: the build view could not take its place", exc_info=True)

    @staticmethod
    def _take_place(parts: dict, data: dict | None = None) -> None:
        parts["handle"] = display(data or {"text/plain": "nbbuild: building…"}, raw=True, display_id=True,
                                  metadata={"nbbuild": {"view": "build"}})

    def _serve(self) -> None:
        """The ticker thread: the builds' ticks, one build after another."""
        while True:
            try:
                build, parts, context = self._builds.get(timeout=IDLE)
            except queue.Empty:
                with self._spawn:
                    if self._builds.empty():
                        self._ticker = None
                        return
                continue
            try:
                context.run(self._tick, build, parts)
            except Exception:  # one build's view failed: the thread goes on serving the next builds
                log.debug("nbbuild: the build view could not be updated", exc_info=True)

    def _show(self, parts: dict, plain: str, bar: tuple[int, int, str] = (0, 1, "info"),
              text: str = "<b>nbbuild</b> starting…") -> None:
        """Make the box, in the state given, and put it in the view's place. Layouts and styles are
        shared by every box: each widget is a message to open, and every message a wake-up that
        the build's thread pays for."""
        shared = _SHARED if _SHARED is not None else _share()
        value, most, style = bar
        parts["sent"].update(bar=bar, text=text)
        bar_ = w.IntProgress(value=value, min=0, max=most, bar_style=style, layout=shared["bar"],
                             style=shared["bar_style"])
        html_ = w.HTML(text, layout=shared["text"], style=shared["text_style"])
        box = w.HBox([bar_, html_], layout=shared["box"], _dom_classes=("nbbuild-progress",))
        parts.update(box=box, bar=bar_, text=html_)
        self._place(parts, plain)

    @classmethod
    def _place(cls, parts: dict, plain: str) -> None:
        if parts["handle"] is None:
            cls._take_place(parts, _bundle(parts["box"], plain))
        else:
            parts["handle"].update(_bundle(parts["box"], plain), raw=True, metadata={"nbbuild": {"view": "build"}})

    def _tick(self, build: Any, parts: dict) -> None:
        # a build that is over before the first tick is shown once, settled (no update to send)
        wait = parts["at"] + self.first - time.monotonic()
        while not parts["stop"].wait(max(0.0, wait)):
            wait = self.interval
            p = build.progress()
            if p is None or p.done:
                return
            try:
                with self._lock:
                    if parts["over"]:
                        return
                    if "box" not in parts:
                        self._show(parts, "nbbuild: building…")
                    self._push(parts, p)
            except Exception:  # the front end went away mid-build, or similar: the build goes on
                log.debug("nbbuild: the build view could not be updated", exc_info=True)
                return

    def _bar(self, parts: dict, value: int, most: int, style: str | None = None, now: bool = False) -> None:
        """The bar's changes in one message, at most one every `bar_every` seconds unless `now`."""
        want = (value, most, style or parts["bar"].bar_style)
        if parts["sent"].get("bar") != want and (now or time.monotonic() - parts.get("bar_at", 0.0) >= self.bar_every):
            parts["sent"]["bar"], parts["bar_at"] = want, time.monotonic()
            bar = parts["bar"]
            with bar.hold_sync():
                bar.max, bar.value, bar.bar_style = most, value, want[2]

    def _text(self, parts: dict, value: str) -> None:
        if parts["sent"].get("text") != value:
            parts["sent"]["text"] = value
            parts["text"].value = value

    def _push(self, parts: dict, p: Progress) -> None:
        """(under the view's lock)"""
        known = max(1, p.known)
        self._bar(parts, min(p.checked, known), known)
        counts = f"ran {p.ran}, reused {p.reused}" + (f", failed {p.failed}" if p.failed else "")
        now = p.running
        running = (f'<div class="nbbuild-running">running <b>{html.escape(label(now[0].task))}</b> '
                   f"{now[0].seconds:.1f} s" + (f" (+{len(now) - 1} more)" if len(now) > 1 else "") + "</div>"
                   if now else "")
        self._live_graph(parts, p)
        self._text(parts, f"<b>nbbuild</b> {p.checked}/{p.known} tasks · {counts} · {p.elapsed:.1f} s"
                          f"{running}{rows_html(p)}{parts['graph']}")

    def _live_graph(self, parts: dict, p: Progress) -> None:
        graph = parts["snapshot"]
        if graph is None or self.draw is None or not (p.complete or p.done):
            return
        if not p.done and time.monotonic() - parts["graph_at"] < 1.0:
            return
        live = {r.key: _LIVE.get(r.outcome, r.outcome.value) for r in p.rows}
        live.update({r.key: "running" for r in p.running})
        parts["graph_at"] = time.monotonic()
        parts["graph"] = self.draw(graph, None if p.done else live)

    def finished(self, build: Any) -> None:
        parts, p = self.last, build.progress()
        if parts is None:
            return
        parts["stop"].set()
        with self._lock:
            parts["over"] = True     # no tick pushes from now on
        if p is None:
            return
        if parts["snapshot"] is not None and self.snapshot is not None:
            try:
                parts["snapshot"] = self.snapshot(parts["targets"])    # the states the build left
            except Exception:  # as at the start: the summary must still settle
                log.warning("nbbuild: the task graph could not be read", exc_info=True)
        with self._lock:
            text = label(line(p))
            try:
                self._live_graph(parts, p)
            except Exception:  # the graph is a bonus: the summary must still settle
                log.debug("nbbuild: the live graph could not be drawn", exc_info=True)
            rows = (f"<details><summary>{p.checked} task{'s' if p.checked != 1 else ''}</summary>{rows_html(p)}"
                    "</details>" if p.rows else "")
            bad = bool(p.error or p.failed)
            settled = f"<b>nbbuild</b> {html.escape(text)}{rows}{parts['graph']}"
            if "box" in parts:
                self._bar(parts, max(1, p.checked), max(1, p.checked), "danger" if bad else "success", now=True)
                self._text(parts, settled)
            else:
                # never seen running: no widget, the settled view as HTML in its place, one message
                line_ = f'<span class="nbbuild-failed">{html.escape(text)}</span>' if bad else html.escape(text)
                parts["settled"] = f"<b>nbbuild</b> {line_}{rows}{parts['graph']}"
                style = "" if rows else _STYLE      # the rows bring it
                shown = {"text/plain": text, "text/html": f'{style}<div class="nbbuild-progress nbbuild-settled">'
                                                          f'{parts["settled"]}</div>'}
                if parts["handle"] is None:
                    display(shown, raw=True, metadata={"nbbuild": {"view": "build"}})
                else:
                    parts["handle"].update(shown, raw=True, metadata={"nbbuild": {"view": "build"}})
                return
        self._place(parts, text)

    @property
    def shows_summary(self) -> bool:
        return True


# ---------------------------------------------------------------- metrics and dashboard

def _figures_text(f: Any) -> str:
    rate = f"; hit rate {100 * f.hit_rate:.0f}%" if f.hit_rate is not None else ""
    return (f"ran {f.ran}, reused {f.reused}, failed {f.failed}; {_secs(f.seconds)} spent, "
            f"{_secs(f.saved_seconds)} saved{rate}; {_size(f.bytes_read)} read, {_size(f.bytes_written)} written, "
            f"{f.evictions} evictions")


def metrics_text(m: Metrics) -> str:
    """The plain-text form: the last build, the session, then the store (its counts are over every
    session that used it)."""
    s, st = m.session, m.stats
    asked = st["hits"] + st["misses"]
    rate = f" ({100 * st['hits'] / asked:.0f}% hits)" if asked else ""
    quota = st.get("quota_bytes")
    usage = (f"{_size(st['size_bytes'])} of {_size(quota)} ({100 * st['size_bytes'] / quota:.0f}%)" if quota
             else f"{_size(st['size_bytes'])} (no quota)")
    trouble = ", ".join(f"{st[k]} {k.replace('_', ' ')}" for k in ("damaged", "write_failures") if st.get(k))
    out = [f"last build {_figures_text(m.last)} ({m.last.verified} verified, {m.last.constructed} from older traces)"
           ] if m.last is not None else []
    out += [f"session    {s.builds} build{'' if s.builds == 1 else 's'}: {_figures_text(s)}",
            f"store      {usage}; {st['values']} values, {st['traces']} traces",
            f"reuse      {st['hits']} hits, {st['misses']} misses{rate}, {st['evictions']} evictions ({st['policy']})",
            f"traffic    {_size(st['bytes_written'])} written, {_size(st['bytes_read'])} read"
            f"{'; ' + trouble if trouble else ''}"]
    if m.slowest:
        out.append("slowest    " + ", ".join(f"{r.rule} {_secs(r.seconds)} ({r.runs}×)" for r in m.slowest))
    return "\n".join(out)


def _figures_rows(m: Metrics) -> str:
    cols = [("last build", m.last), ("session", m.session)]
    def cell(f: Any, get: Callable[[Any], str]) -> str:
        return f"<td class=s>{get(f) if f is not None else '—'}</td>"
    rows = [("tasks ran", lambda f: f.ran), ("reused", lambda f: f.reused),
            ("… verified", lambda f: f.verified), ("… from older traces", lambda f: f.constructed),
            ("failed", lambda f: f.failed), ("time spent", lambda f: _secs(f.seconds)),
            ("time saved", lambda f: _secs(f.saved_seconds)),
            ("hit rate", lambda f: f"{100 * f.hit_rate:.0f}%" if f.hit_rate is not None else "—"),
            ("bytes read", lambda f: _size(f.bytes_read)), ("bytes written", lambda f: _size(f.bytes_written)),
            ("evictions", lambda f: f.evictions)]
    head = "<tr><td></td>" + "".join(f"<td class=s><b>{c}</b></td>" for c, _ in cols) + "</tr>"
    return head + "".join(f"<tr><td>{name}</td>" + "".join(cell(f, get) for _, f in cols) + "</tr>"
                          for name, get in rows)


def metrics_view(m: Metrics) -> w.Widget:
    st = m.stats
    quota = st.get("quota_bytes")
    fill = min(1.0, st["size_bytes"] / quota) if quota else 0.0
    store_bar = w.FloatProgress(value=fill, min=0.0, max=1.0, bar_style="warning" if fill > 0.9 else "info",
                                layout=w.Layout(width="320px"))
    store_bar.add_class("nbbuild-quota")
    usage = (f"store {_size(st['size_bytes'])} of {_size(quota)} ({100 * fill:.0f}%)" if quota
             else f"store {_size(st['size_bytes'])} (no quota)")
    slow = "".join(f"<tr><td>{html.escape(r.rule)}</td><td class=s>{_secs(r.seconds)}</td>"
                   f"<td class=s>{r.runs}×</td></tr>" for r in m.slowest)
    table = (f'{_STYLE}<table class="nbbuild-rows">{_figures_rows(m)}</table>'
             + (f'<div style="margin-top:6px"><b>slowest rules</b> (this session)</div>'
                f'<table class="nbbuild-rows">{slow}</table>' if slow else ""))
    note = (f"{st['values']} values, {st['traces']} traces; all sessions: {st['hits']} hits, "
            f"{st['misses']} misses, {st['evictions']} evictions ({st['policy']})")
    box = w.VBox([w.HBox([store_bar, w.HTML(usage)]), w.HTML(f"<small>{html.escape(note)}</small>"), w.HTML(table)])
    box.add_class("nbbuild-metrics")
    return box


def dashboard(graph_html: str, m: Metrics) -> w.Widget:
    graph = w.HTML(graph_html, layout=w.Layout(overflow="auto", max_width="70%"))
    box = w.HBox([graph, metrics_view(m)], layout=w.Layout(align_items="flex-start", grid_gap="16px"))
    box.add_class("nbbuild-dashboard")
    return box
