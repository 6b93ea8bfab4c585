"""Every error is an NbbuildError and says what is wrong in one line."""
from __future__ import annotations

import nbbuild
from nbbuild import errors


def test_the_hierarchy():
    for cls in (errors.BuildError, errors.CycleError, errors.RuleError, errors.UnknownTargetError):
        assert issubclass(cls, errors.NbbuildError)
    # a cancellation passes through a rule body's `except Exception` (tests/test_cancel.py)
    assert issubclass(errors.Cancelled, BaseException) and not issubclass(errors.Cancelled, Exception)
    assert issubclass(errors.UnknownTargetError, LookupError)
    assert set(nbbuild.__all__) >= {"NbbuildError", "BuildError", "CycleError", "RuleError", "UnknownTargetError"}


def test_messages_are_one_line():
    b = object()    # rules need an owner (what an engine context names as `owner`); no Build, no store
    top, bad = nbbuild.Rule(lambda: 0, b, name="top"), nbbuild.Rule(lambda x: x, b, name="bad")
    e = errors.BuildError(bad.task(0), [top.task(), bad.task(0)], "bad(0) failed: ZeroDivisionError: division by zero")
    assert str(e) == "bad(0) failed: ZeroDivisionError: division by zero (needed by top() → bad(0))"
    assert e.errors == [e] and e.chain == [top.task(), bad.task(0)] and e.task == bad.task(0)
    c = errors.CycleError([top.task(), bad.task(1), top.task()])
    assert c.cycle[0] == c.cycle[-1] == top.task() and "top() → bad(1) → top()" in str(c)
    assert "\n" not in str(e) + str(c)
