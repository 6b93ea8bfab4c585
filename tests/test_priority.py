"""Critical-path-first scheduling (engine/priority.py): the longest recorded path starts first."""
from __future__ import annotations

import threading
import time
from types import SimpleNamespace

import pytest

import nbbuild
from nbbuild.engine.priority import CriticalPath, ReadyQueue
from waiting import wait_until


def index(graph: dict[str, tuple[float, tuple[str, ...]]]) -> dict:
    """A trace index as the scheduler has it: key -> [newest trace], each with seconds and deps."""
    def trace(seconds, deps):
        return SimpleNamespace(seconds=seconds, deps=tuple(((d, "h"),) for d in deps), split=lambda: (deps, ()))
    return {k: [trace(s, d)] for k, (s, d) in graph.items()}


def test_below_is_the_longest_recorded_chain_down_from_a_task():
    paths = CriticalPath(index({"top": (1.0, ("a", "b")), "a": (2.0, ("c",)), "b": (5.0, ()), "c": (1.5, ())}))
    assert [paths.below(k) for k in ("c", "a", "b", "top")] == [1.5, 3.5, 5.0, 6.0]
    assert paths.below("never-ran") == 0.0 and paths.seconds("b") == 5.0


def test_a_deep_chain_and_a_cycle_in_old_traces_are_fine():
    chain = {f"t{i}": (0.5, (f"t{i + 1}",) if i < 5000 else ()) for i in range(5001)}
    assert CriticalPath(index(chain)).below("t0") == pytest.approx(0.5 * 5001)
    assert CriticalPath(index({"x": (1.0, ("y",)), "y": (2.0, ("x",))})).below("x") >= 1.0


def test_the_queue_pops_the_most_urgent_first_ties_in_order():
    q = ReadyQueue(CriticalPath({}))
    for name, p in [("a", 1.0), ("b", 3.0), ("c", 1.0), ("d", 2.0)]:
        q.push(name, p)
    assert [q.pop() for _ in range(5)] == ["b", "d", "a", "c", None]
    fifo = ReadyQueue(None)
    for name, p in [("a", 1.0), ("b", 3.0)]:
        fifo.push(name, p)
    assert [fifo.pop(), fifo.pop(), fifo.pop()] == ["a", "b", None]


def fan(b, durations, salt, starts, threads=2):
    """top fetches work(0..n) as one group; work(i) sleeps durations[i] (it reads `salt`, so
    changing salt makes every one run again, with the durations recorded the time before).
    `starts` lists the bodies in the order the threads took them: the first bodies, one a thread,
    wait until each of them is listed (a thread slow to list its body would otherwise let the
    other thread list the next one before it)."""
    lock = threading.Lock()

    @b.rule
    def work(i):
        with lock:
            starts.append(i)
        wait_until(lambda: len(starts) >= threads, "every thread to take its first body")
        time.sleep(durations[i] + 0 * salt[0])
        return i

    @b.rule
    def top():
        return sum(work.map(range(len(durations))))
    return top


@pytest.mark.parametrize("order, first", [("critical-path", [5, 4]), ("fifo", [0, 1])])
def test_with_more_ready_tasks_than_threads_the_longest_starts_first(tmp_path, order, first):
    durations = [0.01, 0.01, 0.01, 0.01, 0.2, 0.5]      # far apart: a busy machine's stalls do not reorder them
    salt, starts = [0], []
    with nbbuild.Build(tmp_path / "store", workers=2) as b:
        top = fan(b, durations, salt, starts)
        assert top() == 15                       # the first build records how long each ran
        b.order = order
        salt[0] = 1
        starts.clear()
        assert top() == 15
    assert sorted(starts) == [0, 1, 2, 3, 4, 5]
    assert sorted(starts[:2]) == sorted(first)   # two threads: the two it starts first


def test_one_thread_has_no_choice_to_make(tmp_path):
    salt, starts = [0], []
    with nbbuild.Build(tmp_path / "store", workers=1) as b:
        top = fan(b, [0.0, 0.0, 0.05], salt, starts, threads=1)
        top()
        salt[0] = 1
        starts.clear()
        top()
    assert starts == [0, 1, 2]


def test_above_is_the_longest_recorded_chain_from_the_targets_down_to_a_task():
    # top (1) -> a (2) -> c; top -> b (5) -> c; c (1.5) is under both: the longer chain counts
    paths = CriticalPath(index({"top": (1.0, ("a", "b")), "a": (2.0, ("c",)), "b": (5.0, ("c",)), "c": (1.5, ())}))
    paths.targets = frozenset({"top"})
    assert [paths.above(k) for k in ("top", "a", "b", "c", "elsewhere")] == [0.0, 1.0, 1.0, 6.0, 0.0]


def test_a_task_that_never_ran_is_estimated_at_its_rules_mean_seen_so_far():
    paths = CriticalPath(index({"work/1": (2.0, ()), "work/2": (4.0, ()), "plot/1": (9.0, ())}))
    assert paths.seconds("work/new") == 0.0             # nothing of its rule seen yet
    assert paths.below("work/1") + paths.below("work/2") == 6.0
    assert paths.seconds("work/new") == paths.below("work/other") == 3.0
    assert paths.seconds("fit/new") == 0.0


def layered(b, salt, events, lock):
    """node(i) of a small DAG reads what `graph` says; `events` logs ("start", i) when its body
    starts and ("end", i) when it returns."""
    graph = {0: (), 1: (), 2: (0,), 3: (0, 1), 4: (2, 3), 5: (1,), 6: (4, 5)}

    @b.rule
    def node(i):
        with lock:
            events.append(("start", i))
        total = sum(node.map(graph[i])) + i + 0 * salt[0]
        with lock:
            events.append(("end", i))
        return total

    return graph, node


def test_with_several_threads_a_body_starts_once_what_its_last_run_fetched_is_done(tmp_path):
    # started at once, a body would fetch its dependencies and wait for them on the thread it
    # started on (a greenlet cannot move), while another thread may be idle: it is deferred instead
    salt, events, lock = [0], [], threading.Lock()
    with nbbuild.Build(tmp_path / "store", workers=2) as b:
        graph, node = layered(b, salt, events, lock)
        first = node(6)
        salt[0] = 1                     # every node runs again
        events.clear()
        assert node(6) == first
    at = {e: n for n, e in enumerate(events)}
    for i, deps in graph.items():
        assert all(at[("end", d)] < at[("start", i)] for d in deps), (i, events)


def test_one_thread_or_fifo_starts_a_body_first_and_lets_it_fetch(tmp_path):
    for workers, order in ((1, "critical-path"), (2, "fifo")):
        salt, events, lock = [0], [], threading.Lock()
        with nbbuild.Build(tmp_path / f"store{workers}{order}", workers=workers) as b:
            graph, node = layered(b, salt, events, lock)
            b.order = order
            node(6)
            salt[0] = 1
            events.clear()
            node(6)
        assert events.index(("start", 6)) < events.index(("end", 4)), (workers, order)


def test_a_deferral_through_dependencies_the_code_no_longer_has_does_not_hang(tmp_path):
    # the last run of a fetched b; now b fetches a and a fetches nothing: a waits for b (its last
    # run's), b for a (its code's). When every thread is idle, a's body runs anyway
    flip = [False]
    with nbbuild.Build(tmp_path / "store", workers=2) as b:
        @b.rule
        def a():
            return 1 if flip[0] else 1 + bee()

        @b.rule
        def bee():
            return 10 + (a() if flip[0] else 0)

        @b.rule
        def top():
            return sum([a(), bee()])

        assert top() == 11 + 10
        flip[0] = True
        assert top() == 1 + 11


def test_a_real_cycle_behind_a_deferral_is_still_a_cycle(tmp_path):
    loop = [False]
    with nbbuild.Build(tmp_path / "store", workers=2) as b:
        @b.rule
        def a():
            return 1 + bee()

        @b.rule
        def bee():
            return 10 + (a() if loop[0] else 0)

        assert a() == 11
        loop[0] = True
        with pytest.raises((nbbuild.CycleError, nbbuild.BuildError)):
            a()
