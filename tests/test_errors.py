"""Every error is an NbbuildError and says what is wrong in one line."""
from __future__ import annotations

import nbbuild
from nbbuild import errors


def test_the_hierarchy():
    for cls in (errors.BuildError, errors.CycleError, errors.RuleError, errors.UnknownTargetError,
                errors.Cancelled):
        assert issubclass(cls, errors.NbbuildError)
    assert issubclass(errors.UnknownTargetError, LookupError)
    assert set(nbbuild.__all__) >= {"NbbuildError", "BuildError", "CycleError", "RuleError", "UnknownTargetError"}


def test_messages_are_one_line():
    e = errors.BuildError("bad(0)", ["top()", "bad(0)"], "bad(0) failed: ZeroDivisionError: division by zero")
    assert str(e) == "bad(0) failed: ZeroDivisionError: division by zero (needed by top() → bad(0))"
    assert e.errors == [e] and e.chain == ["top()", "bad(0)"]
    c = errors.CycleError(["a()", "b()", "a()"])
    assert c.cycle == ["a()", "b()", "a()"] and "a() → b() → a()" in str(c)
    assert "\n" not in str(e) + str(c)
