"""Metrics (report/metrics.py): the last build and the session, as `Build.metrics()` gives them."""
from __future__ import annotations

import time

import pytest

import nbbuild


def rules(b, calls, data):
    @b.rule
    def raw():
        calls.append("raw")
        time.sleep(0.05)
        return list(range(data[0]))

    @b.rule
    def clean():
        calls.append("clean")
        return [x for x in raw() if x % 2]
    return raw, clean


def test_the_last_build_and_the_session_are_counted_apart(store_dir, calls):
    data = [1000]
    with nbbuild.Build(store_dir) as b:
        _, clean = rules(b, calls, data)
        clean()
        m = b.metrics()
        assert (m.last.builds, m.last.ran, m.last.reused, m.last.failed) == (1, 2, 0, 0)
        assert m.last.bytes_written > 1000 and m.last.bytes_read == 0
        assert (m.last.hits, m.last.misses, m.last.hit_rate) == (0, 2, 0.0)
        first = m.last.seconds
        clean()
        m = b.metrics()
        assert (m.last.ran, m.last.reused, m.last.verified, m.last.saved_seconds >= 0.05) == (0, 2, 2, True)
        assert (m.session.builds, m.session.ran, m.session.reused) == (2, 2, 2)
        assert m.session.hit_rate == 0.5
        assert m.session.seconds == pytest.approx(first + m.last.seconds)
        assert [r.rule for r in m.slowest] == ["raw", "clean"] and m.slowest[0].runs == 1
        assert m.slowest[0].seconds >= 0.05
        assert m.stats["values"] == 2 and m.stats["traces"] == 2
    with nbbuild.Build(store_dir) as again:        # a new session on the same store
        raw, clean = rules(again, calls, data)
        assert again.metrics().last is None and again.metrics().session.builds == 0
        again.build(raw)                           # its value must be loaded: bytes read
        m = again.metrics()
        assert m.last.bytes_read > 1000 and m.last.hits == 1 and m.last.ran == 0
    assert calls == ["clean", "raw"]


def test_a_reverted_edit_counts_as_constructed(b, calls):
    data = [10]
    _, clean = rules(b, calls, data)
    clean()
    data[0] = 20
    rules(b, calls, data)[1]()
    data[0] = 10
    raw, clean = rules(b, calls, data)
    clean()
    m = b.metrics()
    assert m.last.constructed >= 1 and m.last.reused == m.last.verified + m.last.constructed


def test_failed_builds_count_for_the_session(b):
    @b.rule
    def broken():
        raise ValueError("no")

    with pytest.raises(nbbuild.BuildError):
        broken()
    m = b.metrics()
    assert (m.last.failed, m.session.builds, m.session.failed) == (1, 1, 1)


def test_evictions_in_a_build_and_by_gc_are_counted(store_dir):
    with nbbuild.Build(store_dir, quota="60 KB") as b:
        @b.rule
        def blob(i):
            return bytes([i]) * 25_000

        @b.rule
        def sizes():       # the target: the blobs it read are not pinned once the build is over
            return [len(x) for x in blob.map(range(4))]

        assert sizes() == [25_000] * 4
        assert b.metrics().last.evictions >= 1
        evicted = b.metrics().session.evictions
        b.set_quota("10 KB", save=False)
        removed = b.gc()
        assert b.metrics().session.evictions >= evicted + removed
