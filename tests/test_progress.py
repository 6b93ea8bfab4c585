"""Progress snapshots (report/progress.py) and build listeners (report/listeners.py): what a view sees
during and after a build."""
from __future__ import annotations

import time

import pytest

import nbbuild
from nbbuild.report.progress import ROW_LIMIT, SLOWEST


class Recorder:
    """A build listener that notes its calls and the snapshot it was shown at the end."""

    def __init__(self):
        self.events: list[str] = []
        self.final = None

    def started(self, build):
        self.events.append("started")
        assert build.progress().done is False

    def finished(self, build):
        self.events.append("finished")
        self.final = build.progress()


def test_a_running_build_shows_the_task_running_now_and_what_finished(b, calls):
    seen = []

    @b.rule
    def raw():
        calls.append("raw")
        return [3, 1, 2]

    @b.rule
    def clean():
        data = raw()
        calls.append("clean")
        time.sleep(0.05)
        seen.append(b.progress())        # asked from inside the body, as a ticker thread would
        return sorted(data)

    assert clean() == [1, 2, 3]
    assert calls == ["raw", "clean"]
    p = seen[0]
    assert not p.done and p.targets == ("clean()",)
    assert [r.task for r in p.running] == ["clean()"] and p.running[0].outcome == "running"
    assert p.running[0].seconds >= 0.05
    assert [(r.task, r.outcome) for r in p.rows] == [("raw()", "executed")]
    assert (p.checked, p.ran, p.reused, p.failed) == (1, 1, 0, 0)
    assert p.known == 2 and p.complete
    assert 0 < p.fraction < 1


def test_after_the_build_the_snapshot_is_settled_with_the_report_line(b, calls):
    @b.rule
    def raw():
        calls.append("raw")
        return 1

    @b.rule
    def total():
        calls.append("total")
        return raw() + 1

    total()
    p = b.progress()
    assert p.done and p.summary == str(b.report) and p.error == ""
    assert (p.checked, p.ran, p.reused, p.known, p.fraction) == (2, 2, 0, 2, 1.0)
    assert [r.task for r in p.rows] == ["raw()", "total()"] and p.running == ()
    total()                     # known up to date in this process: nothing is even visited
    assert calls == ["total", "raw"]
    p = b.progress()
    assert (p.checked, p.ran, p.reused, p.known) == (2, 0, 2, 2)
    assert b.progress() is p    # settled: the same record until the next build


def test_a_big_build_shows_only_the_slowest_tasks(b):
    @b.rule
    def leaf(i):
        if i in (7, 150, 222):      # simulated work: far longer than a busy machine can stall the others
            time.sleep(0.25)
        return i

    @b.rule
    def top():
        return sum(leaf.map(range(ROW_LIMIT + 50)))

    top()
    p = b.progress()
    assert p.checked == ROW_LIMIT + 51 and not p.complete and len(p.rows) == SLOWEST
    assert [r.task for r in p.rows[:3]] == sorted(["leaf(7)", "leaf(150)", "leaf(222)"],
                                                 key=lambda t: -next(r.seconds for r in p.rows if r.task == t))
    assert {r.task for r in p.rows[:3]} == {"leaf(7)", "leaf(150)", "leaf(222)"}
    assert [r.seconds for r in p.rows] == sorted((r.seconds for r in p.rows), reverse=True)


def test_a_fresh_process_knows_the_size_of_the_build_from_its_traces(store_dir, tmp_path):
    data = tmp_path / "data.txt"
    data.write_text("1 2 3")

    def rules(b, seen):
        @b.rule
        def raw():
            seen.append(b.progress())
            return [int(w) for w in open(nbbuild.file(str(data))).read().split()]

        @b.rule
        def mid():
            return sum(raw())

        @b.rule
        def base():
            return 10

        @b.rule
        def other():
            return base() * 2

        @b.rule
        def total():
            return mid() + other()     # two groups in order: other is not met before raw runs
        return total

    with nbbuild.Build(store_dir) as first:
        assert rules(first, [])() == 26
    data.write_text("1 2 4")
    seen: list = []
    with nbbuild.Build(store_dir) as again:          # a new Build: nothing known in memory
        total = rules(again, seen)
        assert total() == 27
    # met so far: total, mid, raw; the stored traces reach other and base too
    assert seen[0].checked == 0 and seen[0].known == 5


def test_listeners_see_every_top_level_build_and_no_nested_one(b):
    view = b.watch(Recorder())

    @b.rule
    def raw():
        return 1

    @b.rule
    def total():
        return raw() + 1

    total()
    total()
    assert view.events == ["started", "finished", "started", "finished"]
    assert view.final.done and view.final.summary == str(b.report)
    b.unwatch(view)
    total()
    assert len(view.events) == 4


def test_a_failed_build_settles_with_its_report_and_the_error(b):
    view = b.watch(Recorder())

    @b.rule
    def broken():
        raise ValueError("bad row")

    with pytest.raises(nbbuild.BuildError):
        broken()
    p = view.final
    assert p.done and p.failed == 1 and p.summary.startswith("ran 0, reused 0, failed 1")
    assert p.error == "BuildError: broken() failed: ValueError: bad row"


def test_an_interrupted_build_settles_as_interrupted(b):
    view = b.watch(Recorder())

    @b.rule
    def slow():
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        slow()
    assert view.final.done and view.final.error == "interrupted" and view.final.summary == ""


def test_a_view_that_raises_is_logged_and_the_build_goes_on(b, caplog):
    class Broken:
        def started(self, build):
            raise RuntimeError("no front end")

        def finished(self, build):
            raise AssertionError("a view that failed to start is not told of the end")

    b.watch(Broken())

    @b.rule
    def answer():
        return 42

    assert answer() == 42
    assert "a build view failed in started" in caplog.text


def test_a_settled_build_keeps_no_value_alive(b):
    import gc
    import weakref

    class Big:
        pass

    made = []

    @b.rule(policy="memory")
    def big():
        made.append(weakref.ref(value := Big()))
        return value

    b.build(big)
    b.forget()                    # the Build's own memory of values: what stays is up to the rest
    gc.collect()
    assert made[0]() is None and b.progress().done


def test_a_view_keeps_its_state_in_the_store_for_the_sessions_that_follow(store_dir):
    """(the notebook's badges come back after a restart this way) JSON in, the same out, in a
    fresh Build on the store; None forgets it; the store's own settings are not a view's."""
    states = {"cell-1": {"state": "stale", "reason": "global threshold changed"}}
    with nbbuild.Build(store_dir) as first:
        assert first.view_state("lab:a.ipynb") is None
        first.keep_view_state("lab:a.ipynb", states)
        first.set_quota("1 GB")
    with nbbuild.Build(store_dir) as later:
        assert later.view_state("lab:a.ipynb") == states
        assert later.view_state("lab:b.ipynb") is None
        assert later.view_state("quota") is None, "a view's names are apart from the store's settings"
        later.keep_view_state("lab:a.ipynb", None)
    with nbbuild.Build(store_dir) as last:
        assert last.view_state("lab:a.ipynb") is None


def test_outcomes_and_states_are_their_words_wherever_text_goes(b):
    import json

    @b.rule
    def one():
        return 1

    one()
    outcome = b.report.tasks[0].outcome
    state = b.status(one).state
    assert [outcome, state] == ["executed", "up to date"]
    assert [f"{outcome}", str(outcome), "%s" % outcome, f"{state:>12}"] == ["executed", "executed", "executed",
                                                                           "  up to date"]
    assert json.dumps({outcome: state}) == '{"executed": "up to date"}'
    assert {"executed": 1}[outcome] == 1


def test_built_is_told_after_each_build_that_succeeded_with_its_targets(b):
    from nbbuild.report.listeners import BuildListener, Listener

    class Built(Listener):
        def __init__(self):
            self.seen = []

        def built(self, build, targets):
            self.seen.append(([repr(t) for t in targets], sorted(build.report.executed)))   # finishing order varies

    view, told = b.watch(Recorder()), b.watch(Built())
    assert b.listeners == [view, told] and isinstance(told, BuildListener)

    @b.rule
    def raw(n):
        if n < 0:
            raise ValueError(n)
        return n

    b.build(raw.task(1), raw.task(2))
    raw(1)
    with pytest.raises(nbbuild.BuildError):
        raw(-1)
    assert told.seen == [(["raw(1)", "raw(2)"], ["raw(1)", "raw(2)"]), (["raw(1)"], [])]
    assert view.events == ["started", "finished"] * 3       # built is sent only to who defines it


def test_a_listener_that_raises_in_built_is_logged_and_the_value_is_returned(b, caplog):
    class Broken:
        def built(self, build, targets):
            raise RuntimeError("no replay")

    b.watch(Broken())

    @b.rule
    def answer():
        return 42

    assert answer() == 42
    assert "a build view failed in built" in caplog.text
