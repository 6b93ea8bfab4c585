"""Red-green marking (engine/verified.py): what an earlier build verified stays known until one of its inputs changes."""
from __future__ import annotations

from dataclasses import dataclass
from types import SimpleNamespace as NS

from nbbuild.engine.verified import CleanSet
from nbbuild.engine.trace import FILE_PREFIX, Trace

DONE = 3


def _state(key, deps=(), files=(), policy="persist", status=DONE):
    groups = tuple(((d, "h-" + d),) for d in deps) + tuple(((FILE_PREFIX + p, h),) for p, h in files)
    trace = Trace(key, key.split("/")[0], "[]", key + "()", "v", groups, "h-" + key, 1.0)
    rule = NS(policy=policy, name=key.split("/")[0])
    return NS(task=NS(key=key, rule=rule, _repr=key + "()"), status=status, hash="h-" + key,
              trace=trace, seconds=1.0)


@dataclass(frozen=True)
class _Rule:
    name: str
    policy: str = "persist"


def _clean(*states, versions=None):
    c = CleanSet()
    c.record(states, {_Rule(n): NS(version=v) for n, v in (versions or {}).items()}, DONE)
    return c


def _rules(*names):
    return {n: _Rule(n) for n in names}


def test_nothing_changed_keeps_everything():
    c = _clean(_state("a/1"), _state("b/1", deps=["a/1"], files=[("/f", "x")]), versions={"a": "v", "b": "v"})
    c.invalidate(_rules("a", "b"), lambda r: NS(version="v"), lambda p: "x")
    assert set(c.hashes) == {"a/1", "b/1"}


def test_a_changed_rule_version_drops_its_tasks_and_their_dependents():
    c = _clean(_state("a/1"), _state("b/1", deps=["a/1"]), _state("c/1"), versions={"a": "v", "b": "v", "c": "v"})
    c.invalidate(_rules("a", "b", "c"), lambda r: NS(version="new" if r.name == "a" else "v"), lambda p: "")
    assert set(c.hashes) == {"c/1"}


def test_a_changed_file_drops_its_readers_and_their_dependents_transitively():
    c = _clean(_state("a/1", files=[("/f", "x")]), _state("b/1", deps=["a/1"]), _state("c/1", deps=["b/1"]),
               _state("d/1"), versions={n: "v" for n in "abcd"})
    c.invalidate(_rules(*"abcd"), lambda r: NS(version="v"), lambda p: "changed")
    assert set(c.hashes) == {"d/1"}


def test_removed_rules_and_policy_none_are_never_clean():
    c = _clean(_state("a/1"), _state("n/1", policy="none"), _state("b/1", deps=["n/1"]),
               versions={"a": "v", "b": "v"})
    assert "n/1" not in c.hashes and c.volatile == {"n/1"}
    c.invalidate(_rules("b"), lambda r: NS(version="v"), lambda p: "")
    assert set(c.hashes) == set()      # a: its rule is gone; b: depends on a task that always runs


def test_failed_tasks_are_forgotten():
    c = _clean(_state("a/1"), versions={"a": "v"})
    c.record([_state("a/1", status=4)], {}, DONE)
    assert c.hashes == {}


def test_closure_lists_dependencies_first_and_skips_visited_tasks():
    c = _clean(_state("a/1"), _state("b/1", deps=["a/1"]), _state("c/1", deps=["b/1", "a/1"]))
    assert [t for t, _, _ in c.closure(["c/1"], skip=set())] == ["a/1()", "b/1()", "c/1()"]
    assert [t for t, _, _ in c.closure(["c/1"], skip={"c/1"})] == ["a/1()", "b/1()"]
