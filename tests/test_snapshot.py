"""The index's snapshot (nbbuild/store/snapshot.py): a fresh process reads a store's traces from
one signed row, and row by row only what came after it; a snapshot that no longer covers the
store's trace rows (one deleted, evicted, cleared) or that does not verify is not used."""
from __future__ import annotations

import sqlite3

import pytest

import nbbuild
from nbbuild.engine.trace import Trace
from nbbuild.store import snapshot
from nbbuild.store.store import Store
from oracle import from_scratch

N = 300                 # leaves: enough traces for a snapshot (index._SNAPSHOT_AFTER)


def _define(b, ran, n=N):
    @b.rule
    def leaf(i):
        ran.append(f"leaf({i})")
        return i * i

    @b.rule
    def top():
        ran.append("top")
        return sum(leaf(i) for i in range(n))

    return top


def build(path, n=N) -> list[str]:
    """A fresh Build (as a new process would have) of `top`, its value checked against the
    oracle; what ran."""
    ran: list[str] = []
    with nbbuild.Build(path, workers=1, progress=False) as b:
        top = _define(b, ran, n)
        value, = b.build(top)
    done = list(ran)
    assert value == from_scratch(top.task())
    return done


@pytest.fixture
def decoded(monkeypatch) -> list[int]:
    """How many trace rows were decoded one by one since (not read from a snapshot)."""
    count = [0]
    row_by_row = Trace.decode.__func__

    def decode(cls, data):
        count[0] += 1
        return row_by_row(cls, data)
    monkeypatch.setattr(Trace, "decode", classmethod(decode))
    return count


def kept(path) -> snapshot.Snapshot | None:
    store = Store(path)
    try:
        return snapshot.read(store.table, store.signer)
    finally:
        store.close()


def sql(path, query, args=()):
    con = sqlite3.connect(path / "cache.db")
    try:
        with con:
            return con.execute(query, args).fetchall()
    finally:
        con.close()


@pytest.fixture
def built(tmp_path):
    path = tmp_path / "store"
    assert len(build(path)) == N + 1
    return path


def row_by_row(path, monkeypatch) -> dict:
    with monkeypatch.context() as m:
        m.setattr(snapshot, "read", lambda table, signer: None)
        store = Store(path)
        try:
            store.index.load()
            return store.index.traces
        finally:
            store.close()


def test_a_fresh_process_reads_every_trace_from_the_snapshot_and_runs_nothing(built, decoded, monkeypatch):
    held = kept(built)
    assert held is not None and sum(map(len, held.traces.values())) == N + 1
    rows = row_by_row(built, monkeypatch)
    assert held.traces == rows          # every field, as decoded from its row
    assert {k: [t.created for t in lst] for k, lst in held.traces.items()} == \
        {k: [t.created for t in lst] for k, lst in rows.items()}
    decoded[0] = 0
    assert build(built) == []
    assert decoded[0] == 0


def test_a_store_of_a_few_traces_has_no_snapshot(tmp_path):
    assert build(tmp_path / "store", n=10) != [] and kept(tmp_path / "store") is None


def test_traces_stored_after_the_snapshot_are_read_row_by_row(built, decoded):
    assert build(built, n=N + 2) == ["top", f"leaf({N})", f"leaf({N + 1})"]
    decoded[0] = 0
    assert build(built, n=N + 2) == []
    assert decoded[0] == 3          # two leaves and the new trace of top; the rest from the snapshot


def test_a_snapshot_is_not_used_once_a_trace_row_it_covers_is_deleted(built, decoded):
    [(row,)] = sql(built, "SELECT key FROM Cache WHERE key LIKE 't:leaf/%' ORDER BY rowid LIMIT 1")
    sql(built, "DELETE FROM Cache WHERE key = ?", (row,))
    assert kept(built) is None
    assert build(built) == ["top", "leaf(0)"]   # a dependency without a trace: top runs, and fetches it
    assert decoded[0] >= N


def test_after_the_store_is_cleared_everything_runs_again(built):
    with nbbuild.Build(built, progress=False) as b:
        b.store.clear()
    assert len(build(built)) == N + 1


@pytest.mark.parametrize("where", ["data", "signature"])
def test_a_damaged_snapshot_is_not_used_and_nothing_runs(built, decoded, where):
    [(key, value)] = sql(built, "SELECT key, value FROM Cache WHERE key LIKE 'k:%'")
    data = bytearray(value)
    data[-7 if where == "data" else 3] ^= 0x20
    sql(built, "UPDATE Cache SET value = ? WHERE key = ?", (bytes(data), key))
    assert kept(built) is None
    assert build(built) == []
    assert decoded[0] == N + 1


def test_another_users_snapshot_is_theirs_and_their_rows_are_still_reported(built, tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "another-user"))
    assert kept(built) is None                   # the first user's is not this key's
    assert len(build(built)) == N + 1            # their own traces beside the first user's
    held = kept(built)
    assert held is not None and len(held.foreign) == N + 1
