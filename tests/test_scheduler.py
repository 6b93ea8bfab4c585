"""The suspending scheduler: at most one run per task per build, concurrency on `workers` threads,
waiting without holding a worker, deep and wide graphs on one worker, cycles named."""
from __future__ import annotations

import contextvars
import decimal
import threading

import pytest

import nbbuild
from nbbuild.engine.attachments import Attachments
from nbbuild.engine.context import EngineContext
from nbbuild.engine.rule import Rule
from nbbuild.engine.scheduler import Scheduler
from nbbuild.executors.hubs import HelperPool
from nbbuild.store import serialisation
from nbbuild.store.memory import Memory
from oracle import from_scratch


def test_a_shared_dependency_runs_once_per_build(b, calls):
    @b.rule
    def raw():
        calls.append("raw")
        return [1, 2, 3]

    @b.rule
    def left():
        calls.append("left")
        return sum(raw())

    @b.rule
    def right():
        calls.append("right")
        return max(raw())

    @b.rule
    def both():
        calls.append("both")
        return left() + right()

    assert both() == 9
    assert sorted(calls) == ["both", "left", "raw", "right"]
    assert b.report.executed.count("raw()") == 1


def test_targets_of_one_build_run_concurrently(tmp_path):
    """Two tasks that can only finish together: they must be running at the same time."""
    with nbbuild.Build(tmp_path, workers=2) as b:
        barrier = threading.Barrier(2, timeout=10)

        @b.rule
        def meet(i):
            barrier.wait()
            return i

        assert b.build(meet.task(1), meet.task(2)) == [1, 2]


def test_a_waiting_task_holds_no_worker(tmp_path):
    """Two parents each wait for children that can only finish together. With two workers this
    finishes only if the waiting parents let the children run."""
    with nbbuild.Build(tmp_path, workers=2) as b:
        barrier = threading.Barrier(2, timeout=10)

        @b.rule
        def child(i):
            barrier.wait()
            return i

        @b.rule
        def parent(i):
            return child(i) * 10

        assert b.build(parent.task(1), parent.task(2)) == [10, 20]


def test_map_fetches_a_group_concurrently(tmp_path):
    with nbbuild.Build(tmp_path, workers=3) as b:
        barrier = threading.Barrier(3, timeout=10)

        @b.rule
        def part(i):
            barrier.wait()
            return i

        @b.rule
        def whole():
            return sum(part.map(range(3)))

        assert whole() == 3
        trace = b.store.traces(whole.task().key)[0]
        assert len(trace.deps) == 1 and len(trace.deps[0]) == 3


@pytest.mark.parametrize("depth", [200, 3000])
def test_a_deep_chain_on_one_worker_neither_deadlocks_nor_overflows(tmp_path, depth):
    with nbbuild.Build(tmp_path, workers=1) as b:
        @b.rule
        def chain(n):
            return 0 if n == 0 else chain(n - 1) + 1

        assert chain(depth) == depth
        assert len(b.report.executed) == depth + 1
        assert chain(depth) == depth
        assert b.report.executed == [] and len(b.report.reused) == depth + 1


def test_a_wide_fan_out_on_one_worker(tmp_path, calls):
    with nbbuild.Build(tmp_path, workers=1) as b:
        @b.rule
        def leaf(i):
            return i * i

        @b.rule
        def wide(n):
            return sum(leaf(i) for i in range(n))

        @b.rule
        def wide_group(n):
            return sum(leaf.map(range(n)))

        assert wide(1000) == sum(i * i for i in range(1000))
        assert wide_group(1000) == wide(1000)
        assert len(b.report.executed) == 0 and len(b.report.reused) == 1001


@pytest.mark.parametrize("workers", [1, 4])
def test_any_number_of_workers_agrees_with_the_oracle(tmp_path, workers):
    with nbbuild.Build(tmp_path, workers=workers) as b:
        @b.rule
        def fib(n):
            return n if n < 2 else fib(n - 1) + fib(n - 2)

        assert fib(25) == from_scratch(fib.task(25))
        assert len(b.report.executed) == 26
        assert fib(80) == 23416728348467685


def test_a_cycle_raises_cycle_error_naming_it(b):
    @b.rule
    def a():
        return c() + 1

    @b.rule
    def c():
        return a() + 1

    with pytest.raises(nbbuild.CycleError) as info:
        a()
    assert info.value.cycle in ([a.task(), c.task(), a.task()], [c.task(), a.task(), c.task()])
    assert "a()" in str(info.value) and "c()" in str(info.value)


def test_a_task_that_fetches_itself_is_a_cycle(b):
    @b.rule
    def selfish():
        return selfish()

    with pytest.raises(nbbuild.CycleError) as info:
        selfish()
    assert info.value.cycle == [selfish.task(), selfish.task()]


def test_a_cycle_through_a_deep_chain_is_found(b):
    @b.rule
    def ring(n):
        return ring((n + 1) % 60) + 1

    with pytest.raises(nbbuild.CycleError) as info:
        ring(0)
    assert len(info.value.cycle) == 61 and info.value.cycle[0] == info.value.cycle[-1]


def test_a_cycle_does_not_poison_the_next_build(b):
    flag = {"cycle": True}

    @b.rule
    def x():
        return y() if flag["cycle"] else 1

    @b.rule
    def y():
        return x()

    with pytest.raises(nbbuild.CycleError):
        x()
    flag["cycle"] = False   # a global read by value: x's version changes
    assert x() == 1


@pytest.mark.parametrize("workers", [1, 2])
def test_an_interrupt_stops_the_build_stores_nothing_partial_and_the_next_build_works(tmp_path, workers):
    with nbbuild.Build(tmp_path, workers=workers) as b:
        interrupt = {"on": True}
        ran = []

        @b.rule
        def done_first():
            ran.append("done_first")
            return 1

        @b.rule
        def interrupted():
            ran.append("interrupted")
            if interrupt["on"]:
                raise KeyboardInterrupt      # what Ctrl-C / a kernel interrupt raises
            return 2

        @b.rule
        def top():
            return done_first() + interrupted()

        with pytest.raises(KeyboardInterrupt):
            top()
        assert b.store.traces(interrupted.task().key) == [] and b.store.traces(top.task().key) == []
        interrupt["on"] = False
        ran.clear()
        assert top() == 3
        assert ran == ["interrupted"]      # done_first's completed run was kept


def test_identical_values_are_stored_once(b):
    @b.rule
    def same(i):
        return list(range(1000))

    b.build(same.task(1), same.task(2), same.task(3))
    assert b.store.stats()["values"] == 1 and b.store.stats()["traces"] == 3


_VAR = contextvars.ContextVar("nbbuild_test_var", default="unset")


@pytest.mark.parametrize("workers", [1, 3])
def test_rule_bodies_see_the_callers_context_variables(tmp_path, workers):
    with nbbuild.Build(tmp_path, workers=workers) as b:
        @b.rule(policy="none")
        def see(i):
            return _VAR.get(), decimal.getcontext().prec

        @b.rule(policy="none")
        def deep(n):
            return see(n) if n == 0 else deep(n - 1)   # past the inline depth: queued, new greenlets

        token = _VAR.set("caller")
        with decimal.localcontext() as ctx:
            ctx.prec = 7
            values = b.build(*[see.task(i) for i in range(4)], deep.task(100))
        _VAR.reset(token)
        assert set(values) == {("caller", 7)}


class FakeStore:
    """Only what the engine context uses of a store, in memory: traces by task key (newest
    first) and pickled values by hash. No Build, no diskcache."""

    path = "<fake store>"

    def __init__(self) -> None:
        self.index: dict[str, list] = {}
        self.memory_traces: dict[str, list] = {}
        self.blobs: dict[str, bytes] = {}

    def verified(self) -> None:             # what a last build verified: nothing kept
        return None

    def keep_verified(self, data: bytes) -> None:
        pass

    def traces_index(self) -> dict[str, list]:
        return self.index

    def refresh_if_changed(self) -> bool:
        return False

    def any_trace(self, key: str):
        found = self.index.get(key) or self.memory_traces.get(key)
        return found[0] if found else None

    def record(self, trace, persist: bool = True) -> None:
        (self.index if persist else self.memory_traces).setdefault(trace.key, []).insert(0, trace)

    def put_value(self, ser) -> None:
        self.blobs[ser.digest] = ser.blob()

    def load(self, digest: str, by_value: set[str] | None = None):
        blob = self.blobs.get(digest)
        return (True, serialisation.deserialize(blob), "") if blob is not None else (False, None, "")

    def value_size(self, digest: str) -> int | None:
        blob = self.blobs.get(digest)
        return len(blob) if blob is not None else None


def _context(store: FakeStore, rules: dict) -> EngineContext:
    """A fresh process's context over `store`: nothing in memory, no task made yet."""
    return EngineContext(store=store, memory=Memory(store), pool=HelperPool(), attachments=Attachments(store),
                         rules=rules, owner=OWNER)


OWNER = object()      # what a Build is to its rules: whose calls inside a running body are fetches


def test_the_scheduler_runs_on_its_context_alone_with_a_fake_store(calls):
    def raw():
        calls.append("raw")
        return [1, 2, 3]

    def total():
        calls.append("total")
        return sum(raw_rule())      # a rule is no input of the code that calls it: a dependency

    def again():        # other code, the same value: what depends on it is cut off early
        calls.append("raw again")
        return [1, 2, 3]

    raw_rule = Rule(raw, OWNER)
    rules = {"raw": raw_rule, "total": Rule(total, OWNER)}
    store = FakeStore()
    ctx = _context(store, rules)
    states = Scheduler(ctx).run([rules["total"].task()], collect=False)
    assert [st.value for st in states] == [6]
    assert calls == ["total", "raw"]
    assert sorted(store.index) == [rules["raw"].task().key, rules["total"].task().key]

    # another process, the same store: both verified from their traces, the target's value loaded
    calls.clear()
    sched = Scheduler(_context(store, rules))
    assert [st.value for st in sched.run([rules["total"].task()], collect=False)] == [6]
    assert calls == []
    assert {st.task.key: st.outcome for st in sched.order} == {
        rules["raw"].task().key: "verified", rules["total"].task().key: "verified"}

    # raw's code changed, not its value: raw runs, total is verified (early cutoff)
    raw_rule.fn = again         # as if its cell were edited
    sched = Scheduler(_context(store, rules))
    assert [st.value for st in sched.run([rules["total"].task()], collect=False)] == [6]
    assert calls == ["raw again"]
    assert [(repr(st.task), st.outcome) for st in sched.order] == [("raw()", "executed"), ("total()", "verified")]
