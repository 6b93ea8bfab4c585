"""Several kernels on one store: processes building overlapping graphs on one store at once finish
without errors, with correct values and no lost entries; a value computed by one is reused by the
others.

Each process is a child (store_workload.concurrent_child) that opens the store, says it is ready,
and builds what it is given: shared upstream tasks (base, scaled, piece, stats, total, slow) and its
own downstream ones (own(who, i), mine(who, n)), arrays of 3 MB among them (value files). It reports
what ran, what each build reused, and the hash of each target's value; the test compares those with
the oracle and then builds everything again with a fresh Build, which must run nothing.
"""
from __future__ import annotations

import contextlib
import json
import subprocess

import numpy as np
import pytest
import store_workload as w
from waiting import wait_until

import nbbuild
from nbbuild.store import serialisation, valuefile
from nbbuild.store.store import Store

N = 3


@pytest.fixture(autouse=True)
def _workload(monkeypatch):
    """The workload's globals (SCALE, SLOW, CALLS) are restored after the test."""
    monkeypatch.setattr(w, "SCALE", w.SCALE)
    monkeypatch.setattr(w, "SLOW", w.SLOW)
    monkeypatch.setattr(w, "CALLS", [])


def _start(tmp_path, who, steps, scale, slow=0.0, quota=None):
    cfg = {"store": str(tmp_path / "store"), "scale": scale, "slow": slow, "quota": quota, "steps": steps,
           "ready": str(tmp_path / f"ready-{who}"), "out": str(tmp_path / f"out-{who}.json")}
    return subprocess.Popen(w.command("concurrent", cfg), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, env=w.environment())


def _reports(tmp_path, procs):
    """Every process exited 0, printed no traceback nor any nbbuild warning, and got the oracle's
    value for every target. Returns their reports by name."""
    reports = {}
    for who, proc in procs.items():
        _, err = proc.communicate(timeout=120)
        assert proc.returncode == 0, (who, err)
        assert "Traceback" not in err and "WARNING" not in err, (who, err)
        report = json.loads((tmp_path / f"out-{who}.json").read_text())
        assert report["wrong"] == [], who
        reports[who] = report
    return reports


def _go(tmp_path, procs):
    """The start barrier: once every process has its store open, all are let go at once."""
    go = tmp_path / "go"

    def ready() -> bool:
        assert all(p.poll() is None for p in procs.values()), "a process ended before it was ready"
        return all((tmp_path / f"ready-{who}").exists() for who in procs)
    wait_until(ready, "every process to have its store open")
    go.write_text("go")


def _tasks(b, specs):
    rules = w.define(b)
    return [rules[name].task(*args) for name, args in specs]


def _check(tmp_path, specs_by_scale, slow, reports=(), runs_nothing=True):
    """A fresh Build in this process over every target: the oracle's values (and the hashes the
    processes reported). With `runs_nothing` it runs nothing: no entry the processes wrote was
    lost. A second fresh Build runs nothing in any case."""
    seen = {}
    for r in reports:
        seen.update(r["values"])
    w.SLOW = slow
    for scale, specs in specs_by_scale.items():
        w.SCALE = scale
        w.CALLS.clear()
        with nbbuild.Build(tmp_path / "store", min_free=0, workers=2) as b:
            tasks = _tasks(b, specs)
            values = b.build(*tasks)
            assert not b.report.failed and not b.report.unstored
            if runs_nothing:
                assert (b.report.executed, w.CALLS) == ([], []), scale
        for task, value in zip(tasks, values):
            truth = w.expected(task)
            if isinstance(truth, np.ndarray):
                assert np.array_equal(value, truth), (task, scale)
            else:
                assert value == truth, (task, scale)
            assert seen.get(f"{task!r}@{scale}", w.digest(truth)) == w.digest(truth), (task, scale)
        w.CALLS.clear()
        with nbbuild.Build(tmp_path / "store", min_free=0, workers=2) as b:
            b.build(*_tasks(b, specs))
            assert (b.report.executed, w.CALLS) == ([], []), scale


def _ran(report, prefix):
    return [c for c in report["calls"] if c.startswith(prefix)]


def test_a_value_one_process_computed_is_reused_by_the_others(tmp_path):
    """`a` builds the slow shared task once `b` and `c` have their store open and read; they wait
    until it is done, then all three build their own graphs over it (and over base, shared too)
    at once. slow() ran once, in `a`: `b` and `c` took it from the store as `a` left it."""
    done = str(tmp_path / "slow-done")
    ready = [str(tmp_path / f"ready-{who}") for who in "abc"]
    mine = {who: [["mine", [who, N]]] for who in "abc"}
    procs = {"a": _start(tmp_path, "a", [["wait", ready], ["build", [["slow", []]]], ["touch", done],
                                         ["build", mine["a"]]], scale=1, slow=1.0)}
    for who in "bc":
        procs[who] = _start(tmp_path, who, [["wait", ready + [done]], ["build", mine[who]]], scale=1, slow=1.0)
    reports = _reports(tmp_path, procs)

    assert _ran(reports["a"], "slow") == ["slow()"]
    for who in "bc":
        assert _ran(reports[who], "slow") == []
        assert "slow()" in reports[who]["builds"][0]["reused"]
        assert sorted(_ran(reports[who], "mine")) == [f"mine({who!r}, {N})"]
    _check(tmp_path, {1: [["slow", []]] + [spec for s in mine.values() for spec in s]}, slow=1.0,
           reports=reports.values())


def test_processes_racing_on_the_same_tasks_all_end_with_correct_values_and_lose_nothing(tmp_path):
    """Four processes let go at once on one empty store, each building the whole shared graph
    (base, scaled, pieces, stats, total, slow) and a graph of its own over it. A task may run in
    several of them (they race), but every value is right and every entry is kept."""
    shared = [["total", [N]]] + [["scaled", [i]] for i in range(N)]
    specs = {who: shared + [["mine", [who, 2]]] for who in "abcd"}
    go = str(tmp_path / "go")
    procs = {who: _start(tmp_path, who, [["wait", [go]], ["build", specs[who]]], scale=5, slow=0.8)
             for who in "abcd"}
    _go(tmp_path, procs)
    reports = _reports(tmp_path, procs)

    builds = [r["builds"][0] for r in reports.values()]
    assert max(b["start"] for b in builds) < min(b["end"] for b in builds)   # they really overlapped
    for who, r in reports.items():
        # each ran its own tasks, and no task twice; what it did not run, it took from the others
        assert sorted(_ran(r, "own")) == sorted(set(_ran(r, "own")))
        mine_own = [f"own({who!r}, {i})" for i in range(2)]
        assert set(mine_own) <= set(_ran(r, "own"))
        assert all(c in r["builds"][0]["executed"] or c in r["builds"][0]["reused"]
                   for c in ["total(3)", "slow()", *mine_own])
    _check(tmp_path, {5: [s for v in specs.values() for s in v]}, slow=0.8, reports=reports.values())


def test_a_process_evicting_while_others_build_breaks_nothing(tmp_path):
    """`e` builds with a quota of two arrays and evicts after every build, for two seconds, while
    three others build overlapping graphs at the same scales (each round a fresh Build, as a new
    kernel): values disappear under their feet. No process fails, every value is right, and none
    takes a value evicted meanwhile for a damaged one (no warning, nothing counted damaged);
    afterwards every target builds right, and the store then serves a no-op build."""
    go = str(tmp_path / "go")
    shared = [["total", [N]]] + [["scaled", [i]] for i in range(N)]
    procs = {"e": _start(tmp_path, "e", [["wait", [go]], ["loop", 2.0, True, shared + [["mine", ["e", 2]]]]],
                         scale=7, quota=7 * 10**6)}
    for who in "abc":
        procs[who] = _start(tmp_path, who, [["wait", [go]], ["loop", 2.0, False, shared + [["mine", [who, 2]]]]],
                            scale=7)
    _go(tmp_path, procs)
    reports = _reports(tmp_path, procs)

    assert reports["e"]["evictions"] > 0 and reports["e"]["rounds"] >= 3
    store = Store(tmp_path / "store")
    assert store.stats()["damaged"] == 0       # counted by the processes, in the store
    store.close()
    specs = shared + [["mine", [who, 2]] for who in "eabc"]
    _check(tmp_path, {scale: specs for scale in (7, 8, 9)}, slow=0.0, reports=reports.values(), runs_nothing=False)


# ---------------------------------------------------------------- interleavings, step by step
# Two Store objects on one directory stand for two processes (each has its own SQLite connection);
# the other process's step is run at the exact point where, in a real race, it may land.

def _array_value(seed=1.0):
    return serialisation.pickle_value(np.full(w.ITEMS, seed))     # 3 MB: a value file


def test_a_value_one_process_evicts_while_another_stores_it_again_is_kept(tmp_path, monkeypatch):
    """`evicter` removes a value; `other` computed the same value and stores it again just after
    the eviction's rows are committed, before its files are removed. The row `other` wrote must
    keep its file: a row without its file is an entry lost (its load fails as damaged)."""
    evicter, other = Store(tmp_path / "store"), Store(tmp_path / "store")
    ser = _array_value()
    assert evicter.put_value(ser) is None
    real, stored_again = evicter.table.transact, []

    @contextlib.contextmanager
    def transact():
        with real():
            yield
        if not stored_again:                 # the eviction's commit is done; its unlinks are next
            stored_again.append(other.put_value(_array_value()))

    monkeypatch.setattr(evicter.table, "transact", transact)
    evicter.delete_values([ser.digest])
    assert stored_again == [None] and other.has_value(ser.digest)
    found, value, why = other.load(ser.digest)
    assert (found, why) == (True, "") and np.array_equal(value, np.full(w.ITEMS, 1.0))
    evicter.close()
    other.close()


def test_a_load_that_races_an_eviction_is_a_plain_miss_and_drops_nothing_stored_since(tmp_path, monkeypatch):
    """`loader` reads a value's row; `evicter` evicts the value before `loader` opens its file; then
    `restorer` stores the value again before `loader` decides what to do. The value was evicted,
    not damaged: `loader` sees a plain miss (no damage counted, no warning) and leaves the row and
    file `restorer` wrote alone."""
    loader, evicter, restorer = (Store(tmp_path / "store") for _ in range(3))
    ser = _array_value()
    assert evicter.put_value(ser) is None
    key = valuefile.row_key(ser.digest)
    real_get, real_read, steps = loader.table.get, valuefile.read, []

    def get(row):
        found = real_get(row)
        if row == key and not steps:
            steps.append(evicter.delete_values([ser.digest]))       # evicted right after the row was read
        return found

    def read(path, digest, signer, *rest):
        try:
            return real_read(path, digest, signer, *rest)
        except valuefile.Damaged:
            if len(steps) == 1:
                steps.append(restorer.put_value(_array_value()))   # stored again meanwhile
            raise

    monkeypatch.setattr(loader.table, "get", get)
    monkeypatch.setattr(valuefile, "read", read)
    found, _, why = loader.load(ser.digest)
    monkeypatch.undo()
    assert len(steps) == 2 and steps[1] is None        # both other steps happened, where intended
    assert why == "" and loader.stats()["damaged"] == 0
    found, value, why = restorer.load(ser.digest)
    assert (found, why) == (True, "") and np.array_equal(value, np.full(w.ITEMS, 1.0))
    for s in (loader, evicter, restorer):
        s.close()


def test_after_one_kernel_clears_the_store_the_others_see_and_keep_what_is_built_next(tmp_path):
    """Two kernels on one store: `one` has built (and read back) many tasks when `two` clears the
    store and builds new ones. `one` reuses what `two` built, and its housekeeping (gc: eviction and
    pruning) keeps `two`'s entries: a third kernel runs nothing."""
    calls = []

    def kernel():
        b = nbbuild.Build(tmp_path / "store", workers=1, min_free=0)

        @b.rule
        def x(i):
            calls.append(f"x({i})")
            return i * 2
        return b, x

    one, x1 = kernel()
    for first in (0, 50, 0):                 # each build starts by reading what is new in the store
        one.build(*[x1.task(i) for i in range(first, first + 50)])
    two, x2 = kernel()
    two.clear()
    calls.clear()
    assert two.build(*[x2.task(i) for i in range(100, 110)]) == [i * 2 for i in range(100, 110)]
    assert len(calls) == 10
    calls.clear()
    assert one.build(*[x1.task(i) for i in range(100, 105)]) == [i * 2 for i in range(100, 105)]
    assert calls == []                       # built by `two`: reused
    one.store.set_setting("pruned", 0.0)     # pruning is hourly: let this gc prune
    one.gc()
    three, x3 = kernel()
    assert three.build(*[x3.task(i) for i in range(100, 110)]) == [i * 2 for i in range(100, 110)]
    assert calls == []                       # nothing `two` stored was lost
    for b in (one, two, three):
        b.close()


def test_an_index_another_process_holds_locked_loses_no_build_and_says_why_in_one_line(tmp_path, monkeypatch, caplog):
    """Another process holds the store's index locked past SQLite's wait (diskcache.Timeout at
    the commit): the build still gives the oracle's values, keeps them in memory, says why in one
    warning and which were not stored; once the lock is let go, the next build stores them and a
    fresh one then runs nothing."""
    import logging
    import sqlite3

    import diskcache
    opened = diskcache.Cache._con.fget

    def quick(self):      # the wait for the lock, 60 s in diskcache, cut to 50 ms
        con = opened(self)
        con.execute("PRAGMA busy_timeout = 50")
        return con
    monkeypatch.setattr(diskcache.Cache, "_con", property(quick))
    specs = [["stats", [0]], ["total", [2]]]
    store = tmp_path / "store"
    with nbbuild.Build(store, min_free=0, workers=1) as b:
        tasks = _tasks(b, specs)
        other = sqlite3.connect(store / "cache.db", isolation_level=None)
        other.execute("BEGIN EXCLUSIVE")         # another kernel's commit, stuck
        caplog.clear()
        try:
            values = b.build(*tasks)
        finally:
            other.execute("ROLLBACK")
            other.close()
        assert values == [w.expected(t) for t in tasks]
        [warning] = [r.getMessage() for r in caplog.records if r.name == "nbbuild" and r.levelno >= logging.WARNING]
        assert "locked by another process" in warning and "\n" not in warning
        assert b.report.unstored and not b.report.failed
        w.CALLS.clear()
        b.build(*tasks)                          # the lock is gone: what was kept in memory is stored
        assert w.CALLS == [] and not b.report.unstored
    _check(tmp_path, {w.SCALE: specs}, slow=w.SLOW)
