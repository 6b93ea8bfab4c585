"""The widget views (notebook/widgets.py), their state followed through real builds. Outside a
kernel the widgets have no front end; what they would send is what their traits hold."""
from __future__ import annotations

import threading

import ipywidgets as w
import pytest
from IPython.core.interactiveshell import InteractiveShell

import nbbuild
from nbbuild.notebook.graph import snapshot as graph
from nbbuild.notebook.widgets import BuildView, dashboard, metrics_text, metrics_view
from nbbuild.report.progress import ROW_LIMIT, SLOWEST
from shells import fresh_shell
from waiting import wait_until


@pytest.fixture(autouse=True)
def shell():
    yield fresh_shell()
    InteractiveShell.clear_instance()


class Watched(BuildView):
    """A BuildView that notes every value its widgets take, and from which thread."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.changes: list[tuple[str, str, object, str]] = []   # widget, thread, value, trait

    def _show(self, parts, *args):
        super()._show(parts, *args)
        for name in ("bar", "text"):
            parts[name].observe(
                lambda change, name=name: self.changes.append(
                    (name, threading.current_thread().name, change["new"], change["name"])),
                names=["value", "max", "bar_style"])

    def values(self, name: str) -> list:
        return [v for n, _, v, _ in self.changes if n == name]


def rules(b, calls, until=lambda: True, what="nothing"):
    """raw, and clean reading it. clean's body runs until `until()` holds: until the view has
    shown, from its own thread, what the test looks for while a body runs (with a deadline)."""
    @b.rule
    def raw():
        calls.append("raw")
        return [3, 1, 2]

    @b.rule
    def clean():
        data = raw()
        calls.append("clean")
        wait_until(until, what)
        return sorted(data)
    return clean


def settled(view: BuildView) -> str:
    """The last build's settled view: its box's text, or the HTML of a build never seen running."""
    parts = view.last
    return parts["settled"] if "box" not in parts else parts["text"].value


def texts(view: Watched) -> list[str]:
    """The text widget's values the view's thread pushed."""
    return [v for n, t, v, _ in view.changes if n == "text" and t == "nbbuild-view"]


def test_while_a_build_runs_its_thread_shows_the_running_task(b, calls):
    view = b.watch(Watched(first=0.05, interval=0.05, bar_every=0.0))
    assert rules(b, calls, lambda: any("running <b>" in v for v in texts(view)), "a running line")() == [1, 2, 3]
    assert calls == ["raw", "clean"]
    live = [(t, v) for n, t, v, _ in view.changes if n == "text" and "running <b>" in v]
    assert live and all(t == "nbbuild-view" for t, _ in live)        # pushed by the ticker thread
    assert all("running <b>clean</b>" in v and "1/2 tasks · ran 1, reused 0" in v for _, v in live)
    rows = live[0][1]
    assert "▶</td><td>clean</td>" in rows and "✔ ran</td><td>raw</td>" in rows


def test_updates_are_throttled_and_only_what_changed_is_sent(b, calls):
    view = b.watch(Watched())
    rules(b, calls, lambda: len(texts(view)) >= 3, "three texts")()
    during = [c for c in view.changes if c[1] == "nbbuild-view"]
    # the text at 0.25 s, then every 0.5 s (at 0.25, 0.75 and 1.25 s while the body waits for
    # the third, and no more often however long the build took on a busy machine); the bar at
    # most once a second: not one per task
    most = 1 + int((b.report.seconds - 0.25) / 0.5)
    assert 3 <= len([c for c in during if c[0] == "text"]) <= most
    assert 1 <= len({c[2] for c in during if c[0] == "bar" and c[3] == "value"}) <= 2
    assert len([c for c in during if c[0] == "bar" and c[3] == "max"]) <= 1       # the same max: sent once


def test_it_settles_into_the_reports_line(b, calls, capsys):
    view = b.watch(Watched(first=0.05, interval=0.05, bar_every=0.0))
    rules(b, calls, lambda: texts(view), "the first tick")()
    parts = view.last
    assert "nbbuild-progress" in parts["box"]._dom_classes
    assert (parts["bar"].value, parts["bar"].max, parts["bar"].bar_style) == (2, 2, "success")
    assert parts["text"].value.startswith(f"<b>nbbuild</b> {b.report}<details><summary>2 tasks</summary>")
    assert 'class="nbbuild-running"' not in parts["text"].value     # nothing runs any more
    shown = capsys.readouterr().out.splitlines()
    # the box displayed at the first tick (nothing was shown before), then settled: one display, updated
    assert shown == ["nbbuild: building…", str(b.report)]


def test_a_failed_build_settles_in_red(b):
    view = b.watch(BuildView(first=0.05, interval=0.05))

    @b.rule
    def broken():
        wait_until(lambda: "box" in view.last, "the box")     # seen running, then failing
        raise ValueError("no")

    @b.rule
    def quick():
        raise ValueError("no")

    with pytest.raises(nbbuild.BuildError):
        broken()
    assert view.last["bar"].bar_style == "danger"
    assert "failed 1" in view.last["text"].value
    view.first = 60.0
    with pytest.raises(nbbuild.BuildError):
        quick()
    assert "box" not in view.last and '<span class="nbbuild-failed">ran 0, reused 0, failed 1' in settled(view)


def test_a_big_build_shows_the_slowest_tasks_not_every_row(b):
    view = b.watch(BuildView(first=0.05, interval=0.05))

    @b.rule
    def leaf(i):
        return i

    @b.rule
    def top():
        return sum(leaf.map(range(ROW_LIMIT * 3)))

    top()
    rows = settled(view)
    assert f"{ROW_LIMIT * 3 + 1} tasks checked; the {SLOWEST} slowest shown" in rows
    assert rows.count("<tr") == SLOWEST


def test_a_live_graph_is_drawn_with_running_states_then_settled(b, calls):
    drawn = []
    snapshots = []
    view = b.watch(BuildView(first=0.05, interval=0.05, snapshot=lambda targets: snapshots.append(targets) or graph(b, {}, targets),
                             draw=lambda g, live: drawn.append(live) or "<svg/>"))
    clean = rules(b, calls, lambda: any(live and "running" in live.values() for live in drawn), "a live graph")
    view.graph_for([clean.task()])
    clean()
    keys = {clean.task().key}
    assert any(live and {k for k, s in live.items() if s == "running"} == keys for live in drawn)
    assert drawn[-1] is None                          # the settled graph: states from the store
    assert view.last["text"].value.endswith("</details><svg/>")
    assert snapshots == [[clean.task()]] * 2          # when the build started, and when it ended
    drawn.clear()
    clean()                                           # asked for one build only
    assert drawn == [] and len(snapshots) == 2


def test_metrics_and_dashboard_render_the_build_metrics(b, calls):
    b.set_quota("1 MB", save=False)
    clean = rules(b, calls)
    clean()
    clean()
    m = b.metrics()
    box = metrics_view(m)
    bar = box.children[0].children[0]
    assert "nbbuild-quota" in bar._dom_classes
    assert bar.value == pytest.approx(m.stats["size_bytes"] / 1e6)
    table = box.children[2].value
    for row in ("tasks ran", "reused", "time saved", "hit rate", "bytes written", "evictions", "slowest rules"):
        assert row in table
    assert "<td class=s>100%</td><td class=s>50%</td>" in table      # hit rate: last build, session
    text = metrics_text(m)
    assert text.splitlines()[0].startswith("last build ran 0, reused 2, failed 0;")
    assert "session    2 builds: ran 2, reused 2, failed 0;" in text
    board = dashboard("<svg id=g></svg>", m)
    assert board.children[0].value == "<svg id=g></svg>" and "nbbuild-dashboard" in board._dom_classes


def test_a_build_over_before_the_first_tick_sends_no_widget_and_shows_its_line_once_settled(b, calls, capsys):
    """Nothing of it could be seen running: no widget is made (none to open, none to update), and
    the settled view (the report's line, the rows folded below it) is displayed once, as HTML."""
    view = b.watch(Watched(first=60.0))      # its first tick far beyond any build of two tasks
    opened = []
    before = w.Widget.open
    w.Widget.open = lambda self: opened.append(self) or before(self)
    try:
        rules(b, calls)()
    finally:
        w.Widget.open = before
    # nothing of it was shown before it settled: one display, the settled line
    assert capsys.readouterr().out.splitlines() == [str(b.report)]
    parts = view.last
    assert opened == [] and "box" not in parts and view.changes == []
    assert parts["settled"].startswith(f"<b>nbbuild</b> {b.report}<details><summary>2 tasks</summary>")
    assert "✔ ran</td><td>raw</td>" in parts["settled"]


def test_boxes_share_their_layouts_and_styles(b, calls):
    view = b.watch(BuildView(first=0.05, interval=0.05))
    clean = rules(b, calls, lambda: "box" in view.last, "the box")
    clean()
    first = view.last
    b.build(clean, force=True)
    assert first["bar"].layout is view.last["bar"].layout and first["bar"].style is view.last["bar"].style
    assert first["box"] is not view.last["box"]


def test_one_ticker_thread_serves_the_views_builds_each_in_its_own_context(b, calls):
    """A thread started per build cost a reused cell more than its build: the view keeps one, and
    runs each build's ticks in the context of the thread that started that build (the kernel
    routes a widget's messages to the cell by it)."""
    import contextvars
    cell = contextvars.ContextVar("cell", default=None)
    seen = []
    view = b.watch(BuildView(first=0.05, interval=0.05))
    clean = rules(b, calls, lambda: "box" in view.last, "the box")
    push = view._push
    view._push = lambda parts, p: seen.append((cell.get(), threading.current_thread())) or push(parts, p)
    cell.set(1)
    clean()
    cell.set(2)
    b.build(clean, force=True)
    assert [c for c, _ in seen][:1] == [1] and seen[-1][0] == 2 and {c for c, _ in seen} == {1, 2}
    assert len({t for _, t in seen}) == 1 and seen[0][1] is not threading.current_thread()
