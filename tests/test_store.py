"""The diskcache store: immutable content-addressed values, one row per trace, bulk reads; damaged,
foreign or hand-edited entries are misses, never loaded."""
from __future__ import annotations

import logging
import os
import pickle
import sqlite3
import subprocess
import sys
import textwrap

import diskcache
import numpy as np
import pytest

import nbbuild
from nbbuild.store import serialisation, valuefile
from nbbuild.store.signing import MAC_BYTES
from nbbuild.store.store import Store
from nbbuild.engine.trace import Trace
from oracle import from_scratch


def _trace(key="r/1", result="h1", deps=(), created=1.0):
    return Trace(key, "r", "[[],{}]", "r()", "v1", deps, result, 0.5, (("code", "c"),), (), created)


def _put(s, value):
    ser = serialisation.pickle_value(value)
    assert s.put_value(ser) is None
    return ser.digest


def test_values_are_content_addressed_and_loaded_back(tmp_path):
    s = Store(tmp_path)
    digest = _put(s, {"a": [1, 2, 3]})
    assert _put(s, {"a": [1, 2, 3]}) == digest        # the same value: the same row, written once
    s.flush()
    assert s.load(digest) == (True, {"a": [1, 2, 3]}, "")
    assert s.has_value(digest) and not s.has_value("0" * 32)
    assert s.load("0" * 32) == (False, None, "")
    assert s.stats()["values"] == 1
    s.close()


def test_traces_persist_newest_first_and_identical_ones_once(tmp_path):
    s = Store(tmp_path)
    s.record(_trace(result="old", created=1.0))
    s.record(_trace(result="new", created=2.0))
    s.record(_trace(result="new", created=3.0))
    s.close()
    s = Store(tmp_path)
    assert [t.result for t in s.traces("r/1")] == ["new", "old"]
    assert s.stats()["traces"] == 2
    s.close()


def test_memory_traces_are_not_persisted(tmp_path):
    s = Store(tmp_path)
    s.record(_trace(), persist=False)
    assert s.traces("r/1", persist=False) and not s.traces("r/1")
    s.close()
    s = Store(tmp_path)
    assert s.traces("r/1", persist=False) == [] and s.traces("r/1") == []
    s.close()


def test_refresh_sees_traces_another_process_wrote(tmp_path):
    s = Store(tmp_path)
    assert s.traces("r/1") == []
    code = textwrap.dedent(f"""
        from nbbuild.store.store import Store
        from nbbuild.engine.trace import Trace
        s = Store({str(tmp_path)!r})
        s.record(Trace("r/1", "r", "[[],{{}}]", "r()", "v1", (), "other", 0.1, (), (), 5.0))
        s.close()
    """)
    subprocess.run([sys.executable, "-c", code], check=True)
    s.refresh()
    assert [t.result for t in s.traces("r/1")] == ["other"]
    s.close()


def test_a_damaged_trace_row_is_skipped_not_fatal(tmp_path):
    s = Store(tmp_path)
    s.record(_trace())
    s.flush()
    s.table.cache.set("t:r/2#bad", b"{not json")
    s.close()
    s = Store(tmp_path)
    assert len(s.traces("r/1")) == 1 and s.traces("r/2") == []
    s.close()


def test_stats_count_values_traces_and_bytes(tmp_path):
    s = Store(tmp_path, quota=1000)
    digest = _put(s, b"x" * 100)
    s.record(_trace(result=digest))
    s.count("hits", 2)
    stats = s.stats()
    assert stats["values"] == 1 and stats["traces"] == 1 and stats["hits"] == 2
    assert stats["quota_bytes"] == 1000 and stats["bytes_written"] > 100 and stats["size_bytes"] > 0
    s.clear()
    assert s.stats()["values"] == 0 and s.traces("r/1") == []
    s.close()


def test_the_store_directory_is_private(tmp_path):
    Store(tmp_path / "s").close()
    assert (tmp_path / "s").stat().st_mode & 0o777 == 0o700


def test_making_the_store_directory_private_never_makes_it_writable(tmp_path):
    # a store its owner made read-only (chmod a-w) loses its group and other bits, nothing more:
    # taking them away must not give the owner the write permission they took away themselves
    (tmp_path / "s").mkdir()
    os.chmod(tmp_path / "s", 0o555)
    Store(tmp_path / "s").close()
    assert (tmp_path / "s").stat().st_mode & 0o777 == 0o500


# ---------------------------------------------------------------- corruption and integrity, through a Build
#
# Four rules: `big` gives a value file, `small` and `vec` inline rows (`vec` with an out-of-band
# buffer), `total` depends on the other three. Each test builds them, damages the store while no Build
# has it open, and checks that a fresh Build re-runs exactly the damaged task, with the oracle's
# values and a warning, and that the build after that runs nothing.

_BIG = 200_000          # int64s: 1.6 MB, a value file


def _define(b, calls):
    @b.rule
    def big():
        calls.append("big")
        return np.arange(_BIG, dtype=np.int64)

    @b.rule
    def small():
        calls.append("small")
        return {"n": 41, "name": "small"}

    @b.rule
    def vec():
        calls.append("vec")
        return np.arange(1000, dtype=np.int64) * 3

    @b.rule
    def total():
        calls.append("total")
        return int(big().sum()) + small()["n"] + int(vec().sum())

    return big, small, vec, total


def _build(path, calls):
    """A fresh Build of every rule (as a new process would): checks each value against the oracle."""
    with nbbuild.Build(path, workers=1) as b:
        rules = _define(b, calls)
        values = b.build(*rules)
        report = b.report
    ran = len(calls)
    for rule, value in zip(rules, values):
        expected = from_scratch(rule.task())
        del calls[ran:]                      # the oracle's runs are not the build's
        assert type(value) is type(expected)
        if isinstance(expected, np.ndarray):
            assert value.dtype == expected.dtype and np.array_equal(value, expected)
        else:
            assert value == expected
    return report


def _warnings(caplog):
    return [r.getMessage() for r in caplog.records if r.name == "nbbuild" and r.levelno >= logging.WARNING]


def _sql(path, query, args=()):
    con = sqlite3.connect(os.path.join(path, "cache.db"))
    try:
        with con:
            return con.execute(query, args).fetchall()
    finally:
        con.close()


def _digest(value):
    return serialisation.pickle_value(value).digest


@pytest.fixture
def built(tmp_path, calls):
    """A store (one level down, so that '../../x' from it is tmp_path/x) with every rule built."""
    path = tmp_path / "home" / "store"
    _build(path, calls)
    assert sorted(calls) == ["big", "small", "total", "vec"]
    calls.clear()
    return path


def _rebuilt(path, calls, caplog, runs):
    """A fresh Build runs exactly `runs`, with a warning; the next one runs nothing, silently."""
    caplog.clear()
    report = _build(path, calls)
    assert calls == runs
    assert sorted(report.executed) == sorted(f"{r}()" for r in runs)
    warnings = _warnings(caplog)
    assert warnings, "the damage was not reported"
    calls.clear()
    caplog.clear()
    report = _build(path, calls)
    assert calls == [] and report.executed == []
    assert _warnings(caplog) == []
    return warnings


def _big_file(path):
    [(filename,)] = _sql(path, "SELECT filename FROM Cache WHERE key = ?", ("v:" + _digest(np.arange(_BIG)),))
    assert valuefile.FILE_NAME.match(filename)
    return path / filename


def test_values_are_files_or_inline_rows_as_their_size_says(built):
    assert _big_file(built).stat().st_size > 1_600_000
    for value in ({"n": 41, "name": "small"}, np.arange(1000, dtype=np.int64) * 3):
        [(filename, blob)] = _sql(built, "SELECT filename, value FROM Cache WHERE key = ?", ("v:" + _digest(value),))
        assert filename is None and type(blob) is bytes


def test_a_truncated_value_file_runs_its_task_again(built, calls, caplog):
    path = _big_file(built)
    os.truncate(path, path.stat().st_size // 2)
    [warning] = _rebuilt(built, calls, caplog, ["big"])
    assert "big()" in warning


def test_a_deleted_value_file_runs_its_task_again(built, calls, caplog):
    _big_file(built).unlink()
    [warning] = _rebuilt(built, calls, caplog, ["big"])
    assert "big()" in warning and "missing" in warning


@pytest.mark.parametrize("where", ["signature", "header", "pickle stream", "buffer"])
def test_a_flipped_byte_in_a_value_file_runs_its_task_again(built, calls, caplog, where):
    path = _big_file(built)
    data = bytearray(path.read_bytes())
    offset = {"signature": 3, "header": MAC_BYTES + 9, "pickle stream": MAC_BYTES + 40,
              "buffer": len(data) - 1000}[where]
    data[offset] ^= 0x10
    path.write_bytes(bytes(data))
    warnings = _rebuilt(built, calls, caplog, ["big"])
    assert any("big()" in w for w in warnings)


def _garble_row(path, key, how):
    [(blob,)] = _sql(path, "SELECT value FROM Cache WHERE key = ?", (key,))
    blob = bytearray(blob)
    if how == "flip in data":             # a value's pickle stream, a trace's encoding
        blob[MAC_BYTES + 60] ^= 0x01
    elif how == "flip in buffer":
        blob[-1] ^= 0x01
    elif how == "flip in signature":
        blob[0] ^= 0x01
    elif how == "truncated":
        blob = blob[: len(blob) // 2]
    elif how == "empty":
        blob = b""
    if how == "text":
        new = "garbage"
    elif how == "null":
        new = None
    elif how == "number":
        new = 12345
    else:
        new = bytes(blob)
    _sql(path, "UPDATE Cache SET value = ? WHERE key = ?", (new, key))


@pytest.mark.parametrize("how", ["flip in data", "flip in buffer", "flip in signature", "truncated", "empty",
                                 "text", "null", "number"])
def test_a_garbled_inline_value_row_runs_its_task_again(built, calls, caplog, how):
    _garble_row(built, "v:" + _digest(np.arange(1000, dtype=np.int64) * 3), how)
    warnings = _rebuilt(built, calls, caplog, ["vec"])
    assert any("vec()" in w for w in warnings)


def _trace_row(path, rule):
    with nbbuild.Build(path, workers=1) as b:
        task = _define(b, [])[["big", "small", "vec", "total"].index(rule)].task()
    [(row,)] = _sql(path, "SELECT key FROM Cache WHERE key >= ? AND key < ?", (f"t:{task.key}#", f"t:{task.key}$"))
    return row


@pytest.mark.parametrize("how", ["flip in data", "flip in signature", "truncated", "text", "null"])
def test_a_garbled_trace_row_runs_its_task_again(built, calls, caplog, how):
    _garble_row(built, _trace_row(built, "small"), how)
    [warning] = _rebuilt(built, calls, caplog, ["small"])
    assert "not signed with your key" in warning


def test_a_garbled_value_row_is_replaced_when_its_task_runs_without_loading_it(built, calls, caplog):
    # the trace is gone too, so the task runs before anything reads its row: the row it then
    # stores must replace the garbled one, not be dropped as "already there"
    _garble_row(built, "v:" + _digest(np.arange(1000, dtype=np.int64) * 3), "flip in data")
    _garble_row(built, _trace_row(built, "vec"), "flip in data")
    _rebuilt(built, calls, caplog, ["vec"])


class _Armed:
    """Unpickling this creates `marker`: a row holding it must never be unpickled."""

    def __init__(self, marker, padding=0):
        self.marker, self.padding = marker, padding

    def __reduce__(self):
        return exec, (f"open({self.marker!r}, 'w').close()  # {'x' * self.padding}",)


def test_the_armed_pickle_is_armed(tmp_path):
    pickle.loads(pickle.dumps(_Armed(str(tmp_path / "fired"))))
    assert (tmp_path / "fired").exists()


@pytest.mark.parametrize("padding", [0, 100_000])     # diskcache keeps the bigger pickle in a file of its own
@pytest.mark.parametrize("rule", ["small", "big", "trace of small"])
def test_a_diskcache_pickle_row_is_never_unpickled(built, calls, caplog, tmp_path, rule, padding):
    marker = tmp_path / "fired"
    key = {"small": lambda: "v:" + _digest({"n": 41, "name": "small"}),
           "big": lambda: "v:" + _digest(np.arange(_BIG)),
           "trace of small": lambda: _trace_row(built, "small")}[rule]()
    with diskcache.Cache(str(built)) as cache:
        cache.set(key, _Armed(str(marker), padding))
    [(mode,)] = _sql(built, "SELECT mode FROM Cache WHERE key = ?", (key,))
    assert mode == diskcache.core.MODE_PICKLE
    _rebuilt(built, calls, caplog, [rule.split()[-1]])
    assert not marker.exists()


def test_pickle_rows_under_every_prefix_are_never_unpickled(built, calls, caplog, tmp_path):
    marker = tmp_path / "fired"
    with nbbuild.Build(built, workers=1) as b:
        total = _define(b, [])[3].task()
        total_key, total_value = total.key, from_scratch(total)
    keys = ["v:" + _digest({"n": 41, "name": "small"}), "v:" + _digest(np.arange(_BIG)), _trace_row(built, "small"),
            f"a:{total_key}#{_digest(total_value)}", "f:" + str(tmp_path / "data.txt"), "x:" + "0" * 32,
            "s:quota", "s:clock", "s:pruned", "m:hits"]
    with diskcache.Cache(str(built)) as cache:
        for key in keys:
            cache.set(key, _Armed(str(marker)))
    caplog.clear()
    with nbbuild.Build(built, workers=1) as b:           # everything a session does, with them there
        rules = _define(b, calls)
        for rule in rules:
            b.status(rule), b.why(rule), b.inputs(rule)
        b.plan(*rules)
        assert calls == []
        assert b.build(*rules)[3] == total_value
        assert sorted(calls) == ["big", "small"]
        assert b.attachment(rules[3]) is None
        b.store.stats(), b.known_tasks(rules[1])
        b.gc()
    assert not marker.exists()
    unsigned = [w for w in _warnings(caplog) if "not signed with your key" in w]
    assert len(unsigned) == 1


def test_a_store_signed_with_another_key_is_kept_and_this_key_builds_its_own_beside_it(built, calls, caplog,
                                                                                        tmp_path, monkeypatch):
    mine = os.environ["XDG_CONFIG_HOME"]
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "another-user"))
    caplog.clear()
    report = _build(built, calls)
    assert sorted(calls) == ["big", "small", "total", "vec"]
    assert sorted(report.executed) == ["big()", "small()", "total()", "vec()"]
    [warning] = _warnings(caplog)
    assert "signed by another key" in warning and "kept" in warning and "gc --foreign" in warning
    calls.clear()
    caplog.clear()
    report = _build(built, calls)          # its own entries, beside the first key's
    assert calls == [] and report.executed == []
    monkeypatch.setenv("XDG_CONFIG_HOME", mine)
    report = _build(built, calls)          # and the first key's are all there
    assert calls == [] and report.executed == []


_opened: list | None = None      # paths opened while a test listens (an audit hook, installed once)
_hooked = False


def _audit(event, args):
    if event == "open" and _opened is not None and args and isinstance(args[0], (str, bytes, os.PathLike)):
        _opened.append(os.fsdecode(args[0]))


def test_a_row_naming_a_file_outside_the_store_is_never_read_or_deleted(built, calls, caplog, tmp_path):
    global _opened, _hooked
    if not _hooked:
        sys.addaudithook(_audit)
        _hooked = True
    outside = tmp_path / "x"
    content = _big_file(built).read_bytes()                 # even a whole value file, there
    outside.write_bytes(content)
    _sql(built, "UPDATE Cache SET filename = '../../x' WHERE key = ?", ("v:" + _digest(np.arange(_BIG)),))
    assert os.path.realpath(os.path.join(built, "../../x")) == str(outside)
    _opened = []
    try:
        warnings = _rebuilt(built, calls, caplog, ["big"])
        with nbbuild.Build(built) as b:
            b.gc()
            b.store.sweep_files(older_than=0)
    finally:
        seen, _opened = _opened, None
    assert any("outside the store" in w for w in warnings)
    assert outside.read_bytes() == content
    assert any(p.endswith(".nbv") for p in seen)            # the hook sees the store's own value files
    assert [p for p in seen if os.path.realpath(os.path.join(built, p)) == str(outside)] == []


def test_a_damaged_index_is_moved_aside_and_everything_runs_again(built, calls, caplog):
    with open(built / "cache.db", "r+b") as f:
        f.write(os.urandom(8192))
    caplog.clear()
    report = _build(built, calls)
    assert sorted(calls) == ["big", "small", "total", "vec"]
    assert sorted(report.executed) == ["big()", "small()", "total()", "vec()"]
    [warning] = _warnings(caplog)
    assert "damaged" in warning and "moved" in warning
    [aside] = [n for n in os.listdir(built) if n.startswith("cache.db.damaged-")]
    assert aside in warning
    calls.clear()
    caplog.clear()
    report = _build(built, calls)
    assert calls == [] and report.executed == [] and _warnings(caplog) == []
