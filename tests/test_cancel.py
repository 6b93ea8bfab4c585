"""A cancelled build stores no fallback (issue 15, item 1).

A rule that guards a dependency with `try: ... except Exception: return fallback` must not catch
the cancellation of an interrupted build: `Cancelled` is a BaseException. And a body that sees
the cancellation and returns anyway (it caught BaseException) is never stored, whatever it
returned: the next build, in a fresh Build on the same store, runs it again.
"""
from __future__ import annotations

import threading
import time

import pytest

import nbbuild
from nbbuild.errors import Cancelled

DEADLINE = 30      # seconds a body waits for the interrupt before it gives up (a failure, not a pass)


def test_cancelled_passes_through_except_exception():
    assert issubclass(Cancelled, BaseException) and not issubclass(Cancelled, Exception)


def guarded_pipeline(b, ran, interrupt_on, catch):
    """`boom` raises KeyboardInterrupt once `guarded` runs; `guarded` then keeps calling a fresh
    dependency until one of those calls meets the cancelled build, with a fallback guard."""
    guarded_started, boom_raised = threading.Event(), threading.Event()
    events = {"interrupted": threading.Event(), "guarded ended": threading.Event()}

    @b.rule
    def dep(i):
        return i

    @b.rule
    def boom():
        ran.append("boom")
        if interrupt_on["on"]:
            assert guarded_started.wait(DEADLINE)
            boom_raised.set()
            raise KeyboardInterrupt           # what Ctrl-C or a kernel interrupt raises
        return 1

    @b.rule
    def guarded():
        ran.append("guarded")
        if not interrupt_on["on"]:
            return "value"
        guarded_started.set()
        try:
            assert boom_raised.wait(DEADLINE)
            events["interrupted"].wait(DEADLINE)    # the build has raised KeyboardInterrupt to its caller
            deadline, i = time.monotonic() + DEADLINE, 0
            while time.monotonic() < deadline:    # each call of a new task: the first one after the cancel sees it
                try:
                    dep(i)
                except catch:
                    return "fallback"
                i += 1
            return "the build was never cancelled"
        finally:
            events["guarded ended"].set()

    return boom, guarded, events


@pytest.mark.parametrize("catch", [Exception, BaseException], ids=["except Exception", "except BaseException"])
def test_an_interrupted_build_never_stores_what_a_body_returned_after_the_cancel(store_dir, catch):
    ran: list[str] = []
    interrupt_on = {"on": True}
    with nbbuild.Build(store_dir, workers=2) as b:
        boom, guarded, events = guarded_pipeline(b, ran, interrupt_on, catch)
        with pytest.raises(KeyboardInterrupt):
            b.build(boom.task(), guarded.task())          # two targets: built concurrently
        events["interrupted"].set()                       # guarded's body goes on, on its thread
        assert events["guarded ended"].wait(DEADLINE)
        assert sorted(ran) == ["boom", "guarded"]
        assert b.store.traces(guarded.task().key) == []
    ran.clear()
    interrupt_on["on"] = False
    with nbbuild.Build(store_dir, workers=2) as b:    # a fresh process's view of the same store
        boom, guarded, _ = guarded_pipeline(b, ran, interrupt_on, catch)
        assert b.build(boom.task(), guarded.task()) == [1, "value"]
        assert sorted(ran) == ["boom", "guarded"]
