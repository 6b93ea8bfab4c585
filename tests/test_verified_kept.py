"""What a build verified, kept in the store (engine/verified.py `dump`/`restore`, row `g:` of
store/snapshot.py): a fresh process (a kernel restart, `nbbuild run`) re-checks the inputs of what
the last build verified (rule versions, files, environment variables) instead of walking every
trace, and gets exactly what a walk gives: the oracle's values, and only what changed runs."""
from __future__ import annotations

import marshal
import os
import sqlite3
import uuid

import pytest

import nbbuild
from nbbuild.engine.rebuild import Rebuilder
from nbbuild.store.store import Store
from oracle import from_scratch

N = 5
VARIABLE = "NBBUILD_TEST_VERIFIED_KEPT"


def define(b, ran, folder, factor=2, policy="persist"):
    @b.rule(policy=policy)
    def raw():
        ran.append("raw")
        with open(os.path.join(folder, "data.txt")) as f:
            return [int(x) for x in f.read().split()]

    @b.rule
    def clean(i):
        ran.append(f"clean({i})")
        return raw()[i] * factor

    @b.rule
    def setting():
        ran.append("setting")
        return os.environ.get(VARIABLE, "unset")

    @b.rule
    def top():
        ran.append("top")
        return sum(clean(i) for i in range(N)), setting()

    return top


@pytest.fixture
def folder(tmp_path):
    (tmp_path / "data.txt").write_text(" ".join(str(i) for i in range(N)))
    return tmp_path


@pytest.fixture
def verified(monkeypatch) -> list[str]:
    """The tasks whose traces the builds since walked (Rebuilder.verify)."""
    seen: list[str] = []
    walk = Rebuilder.verify

    def verify(self, st):
        seen.append(st.task.key)
        return walk(self, st)
    monkeypatch.setattr(Rebuilder, "verify", verify)
    return seen


def build(folder, **kw) -> list[str]:
    """A fresh Build (as a new process has) of `top`, its value checked against the oracle; what ran."""
    ran: list[str] = []
    with nbbuild.Build(folder / "store", workers=1, progress=False) as b:
        top = define(b, ran, folder, **kw)
        value, = b.build(top)
        done = list(ran)
        expected = from_scratch(top.task())
    assert value == expected
    return done


ALL = ["top", "clean(0)", "raw", *(f"clean({i})" for i in range(1, N)), "setting"]


def sql(folder, query, args=()):
    con = sqlite3.connect(folder / "store" / "cache.db")
    try:
        with con:
            return con.execute(query, args).fetchall()
    finally:
        con.close()


def test_a_fresh_process_walks_no_trace_but_the_targets(folder, verified):
    assert build(folder) == ALL
    verified.clear()
    assert build(folder) == []
    assert len(verified) == 1 and verified[0].startswith("top/")


def test_a_changed_file_runs_its_reader_and_what_its_value_changes(folder):
    build(folder)
    (folder / "data.txt").write_text("0 1 2 3 40")
    # every clean(i) reads all of raw; only clean(4)'s value changes, so top runs once they have
    assert build(folder) == ["raw", *(f"clean({i})" for i in range(N)), "top"]


def test_a_changed_rule_runs_its_tasks_and_their_dependents(folder):
    build(folder)
    assert build(folder, factor=3) == ["clean(0)", "clean(1)", "top", *(f"clean({i})" for i in range(2, N))]


def test_a_changed_environment_variable_runs_its_reader(folder, monkeypatch):
    build(folder)
    monkeypatch.setenv(VARIABLE, "set")
    assert build(folder) == ["setting", "top"]


def test_a_dependency_whose_trace_is_gone_has_its_dependents_checked_by_their_traces(folder, verified):
    build(folder)
    sql(folder, "DELETE FROM Cache WHERE key LIKE 't:raw/%'")
    (folder / "data.txt").write_text("0 1 2 3 40")
    # raw runs (no trace): were the clean(i) and top still taken as known, top would keep the old sum
    assert build(folder) == ["clean(0)", "raw", *(f"clean({i})" for i in range(1, N)), "top"]


def test_a_dependency_of_policy_memory_runs_and_its_dependents_are_checked(folder):
    assert build(folder, policy="memory") == ALL
    assert build(folder, policy="memory") == ["clean(0)", "raw"]     # in memory only: gone with the process
    (folder / "data.txt").write_text("0 1 2 3 40")
    assert build(folder, policy="memory") == ["clean(0)", "raw", *(f"clean({i})" for i in range(1, N)), "top"]


def test_a_rule_now_of_policy_memory_is_not_taken_from_what_was_kept(folder):
    build(folder)
    assert build(folder, policy="memory") == ["raw"]


@pytest.mark.parametrize("where", ["data", "signature"])
def test_a_damaged_record_is_not_used_and_the_traces_are_walked(folder, verified, where):
    build(folder)
    [(key, value)] = sql(folder, "SELECT key, value FROM Cache WHERE key LIKE 'g:%'")
    data = bytearray(value)
    data[-3 if where == "data" else 3] ^= 0x20
    sql(folder, "UPDATE Cache SET value = ? WHERE key = ?", (bytes(data), key))
    verified.clear()
    assert build(folder) == []
    assert len(verified) == len(ALL)        # every task, by its trace


def test_a_build_that_verified_nothing_new_does_not_write_it_again(folder, monkeypatch):
    kept: list[int] = []
    original = Store.keep_verified

    def keep(self, data):
        kept.append(len(data))
        original(self, data)
    monkeypatch.setattr(Store, "keep_verified", keep)
    ran: list[str] = []
    with nbbuild.Build(folder / "store", workers=1, progress=False) as b:
        top = define(b, ran, folder)
        b.build(top)
        assert len(kept) == 1
        b.build(top)
        assert len(kept) == 1 and ran == ALL


def test_after_the_store_is_cleared_everything_runs_again(folder):
    build(folder)
    with nbbuild.Build(folder / "store", progress=False) as b:
        b.clear()
    assert sql(folder, "SELECT key FROM Cache WHERE key LIKE 'g:%'") == []
    assert build(folder) == ALL


def test_of_two_tasks_writing_one_file_the_one_that_wrote_last_still_has(tmp_path):
    """Only a visit claims a task's files (outputs.Owners): tasks that wrote files are not taken back."""
    path = tmp_path / "f.txt"

    def define(b):
        @b.rule
        def t():
            path.write_text("T")
            return 1

        @b.rule
        def u():
            path.write_text("U")
            return 2

        @b.rule
        def z():
            return t() + u()

        @b.rule
        def r():
            z()
            return path.read_text()
        return r

    for _ in range(2):
        with nbbuild.Build(tmp_path / "store", workers=1, progress=False) as b:
            assert b.build(define(b)) == ["U"] and path.read_text() == "U"


def test_dependents_read_the_value_a_forced_task_not_deterministic_has_now(tmp_path):
    def define(b):
        @b.rule
        def y():
            return uuid.uuid4().hex

        @b.rule
        def x():
            return "x:" + y()

        @b.rule
        def z():
            return "z:" + x()
        return y, z

    with nbbuild.Build(tmp_path / "store", workers=1, progress=False) as b:
        y, z = define(b)
        b.build(z)
        now, = b.build(y, force=True)
        assert b.build(z) == ["z:x:" + now]          # the same process
    with nbbuild.Build(tmp_path / "store", workers=1, progress=False) as b:
        y, z = define(b)
        later, = b.build(z)
        assert later == "z:x:" + b.build(y)[0]        # a fresh one


@pytest.mark.parametrize("shape", [("nbbuild-verified-1", [], [], []), ("nbbuild-verified-1", {}, [], None),
                                   ("nbbuild-verified-1", {}, [], [("k", "h", 1.0)]), (1, 2)])
def test_a_signed_record_of_another_shape_is_not_used(folder, verified, shape):
    build(folder)
    with nbbuild.Build(folder / "store", progress=False) as b:
        b.store.keep_verified(marshal.dumps(shape))
    verified.clear()
    assert build(folder) == [] and len(verified) == len(ALL)
