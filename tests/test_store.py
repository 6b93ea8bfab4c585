"""The diskcache store: immutable content-addressed values, one row per trace, bulk reads."""
from __future__ import annotations

import subprocess
import sys
import textwrap

from nbbuild import hashing
from nbbuild.store import Store
from nbbuild.trace import Trace


def _trace(key="r/1", result="h1", deps=(), created=1.0):
    return Trace(key, "r", "[[],{}]", "r()", "v1", deps, result, 0.5, (("code", "c"),), (), created)


def _put(s, value):
    ser = hashing.pickle_value(value)
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
        from nbbuild.store import Store
        from nbbuild.trace import Trace
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
