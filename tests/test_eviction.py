"""Quota, eviction and pruning: the store stays within its bounds and never loses what a build holds."""
from __future__ import annotations

import os
import time

import numpy as np
import pytest

import nbbuild
from nbbuild import RuleError
from nbbuild.store import serialisation
from nbbuild.store.eviction import DEFAULT_CAP, DEFAULT_SHARE, Candidate, evict, order, parse_size, prune
from nbbuild.store.store import Store
from oracle import from_scratch
from waiting import wait_until


@pytest.mark.parametrize("text,expected", [
    ("2 GB", 2 * 10**9), ("500MB", 500 * 10**6), ("1.5 GiB", int(1.5 * 2**30)), (1024, 1024),
    ("10", 10), (None, None), ("unlimited", None), ("none", None),
])
def test_sizes_are_read(text, expected):
    assert parse_size(text) == expected


@pytest.mark.parametrize("bad", ["lots", "5 XB", "-1", True, -5])
def test_bad_sizes_say_what_is_accepted(bad):
    with pytest.raises(ValueError):
        parse_size(bad)


def test_eviction_goes_under_quota_and_spares_what_the_build_holds(tmp_path):
    s = Store(tmp_path)
    s.min_free = 0
    digests = []
    for i in range(10):
        ser = serialisation.pickle_value(bytes([i]) * 100_000)
        s.put_value(ser)
        digests.append(ser.digest)
        s.flush()
    s.quota = s.volume() - 300_000
    removed = evict(s, lambda: set(digests[:2]))
    left = {h for h, _, _ in s.value_sizes()}
    assert set(digests[:2]) <= left and removed == 10 - len(left) >= 3
    assert s.volume() <= s.quota * 0.9
    assert s.stats()["evictions"] == removed
    s.quota = None
    assert evict(s) == 0
    s.close()


# ---------------------------------------------------------------- bounds: where they come from

def test_the_quota_comes_from_the_argument_then_the_environment_then_the_store_then_the_default(
        store_dir, monkeypatch):
    with nbbuild.Build(store_dir, quota="3 GB") as b:
        assert b.store.quota == 3 * 10**9 and b.store.quota_source == "set for this Build"
        b.set_quota("4 GB")                      # what %nbbuild store --quota does: kept in the store
    monkeypatch.setenv("NBBUILD_QUOTA", "5GB")
    with nbbuild.Build(store_dir) as b:
        assert b.store.quota == 5 * 10**9 and b.store.quota_source == "NBBUILD_QUOTA"
    monkeypatch.delenv("NBBUILD_QUOTA")
    with nbbuild.Build(store_dir) as b:
        assert b.store.quota == 4 * 10**9 and b.store.quota_source.startswith("saved in the store")
        b.set_quota("unlimited")
    with nbbuild.Build(store_dir) as b:
        assert b.store.quota is None
        b.store.set_setting("quota", None)
    with nbbuild.Build(store_dir) as b:
        room = b.store.free_space() + b.store.volume()
        assert b.store.quota == pytest.approx(min(DEFAULT_CAP, DEFAULT_SHARE * room), rel=0.01)
        assert b.store.quota_source.startswith("default")
        total = os.statvfs(store_dir).f_blocks * os.statvfs(store_dir).f_frsize
        assert b.store.min_free == min(2 * 10**9, int(0.05 * total)) and b.store.policy == "gdsf"


def test_bad_bounds_are_one_clear_error(store_dir, monkeypatch):
    monkeypatch.setenv("NBBUILD_QUOTA", "plenty")
    with pytest.raises(RuleError, match=r"^NBBUILD_QUOTA: size 'plenty' not understood"):
        nbbuild.Build(store_dir)
    monkeypatch.delenv("NBBUILD_QUOTA")
    with pytest.raises(RuleError, match="eviction policy 'fifo' not known: use one of gdsf, lru"):
        nbbuild.Build(store_dir, eviction="fifo")
    with pytest.raises(RuleError, match="^min_free: size"):
        nbbuild.Build(store_dir, min_free="a bit")
    monkeypatch.setenv("NBBUILD_EVICTION", "LRU")
    monkeypatch.setenv("NBBUILD_MIN_FREE", "1 MB")
    with nbbuild.Build(store_dir) as b:
        assert b.store.policy == "lru" and b.store.min_free == 10**6


# ---------------------------------------------------------------- policies

def _c(digest, size=1000, used=0.0, uses=1, cost=1.0, credit=0.0):
    return Candidate(digest, size, 0.0, used, uses, credit, cost)


def test_lru_evicts_the_least_recently_used_first():
    assert [c.digest for c in order("lru", [_c("new", used=3), _c("old", used=1), _c("mid", used=2)])] == \
        ["old", "mid", "new"]


def test_gdsf_keeps_what_is_dear_to_recompute_per_byte_and_often_used():
    cheap_big = _c("cheap_big", size=10**8, cost=1.0)
    dear_small = _c("dear_small", size=10**4, cost=30.0)
    often = _c("often", size=10**6, cost=1.0, uses=50)
    once = _c("once", size=10**6, cost=1.0, uses=1)
    assert [c.digest for c in order("gdsf", [dear_small, often, cheap_big, once])] == \
        ["cheap_big", "once", "often", "dear_small"]
    # the clock: a value used after others were evicted (higher credit) outranks an equal one used before
    assert [c.digest for c in order("gdsf", [_c("later", credit=5.0), _c("earlier")])] == ["earlier", "later"]


# ---------------------------------------------------------------- eviction in builds

def _arrays(b, calls, sizes):
    """One rule per size: `r<i>` gives an array of that many bytes; `total` reads them all."""
    rules = []
    for i, size in enumerate(sizes):
        def body(i=i, size=size):
            calls.append(f"r{i}")
            return np.full(size // 8, i, dtype=np.float64)
        rules.append(b.rule(body, name=f"r{i}"))
    return rules


def test_a_build_bigger_than_the_quota_stays_within_it_while_it_runs(store_dir, calls):
    with nbbuild.Build(store_dir, quota="2.5 MB", min_free=0, workers=1) as b:
        rules = _arrays(b, calls, [10**6] * 4)
        held_during = []

        @b.rule
        def total():
            values = [r() for r in rules]           # each 1 MB value is written while the build runs
            held_during.append(len(b.store.value_sizes()))
            return float(sum(v.sum() for v in values))

        assert total() == 4 * 0 + 125_000 * (1 + 2 + 3)
        assert held_during == [2]          # values the build holds in memory made room for the next ones
        assert b.store.volume() <= 2.5e6   # once it is over, the store is within its quota again
        assert b.store.stats()["evictions"] >= 2
        assert b.store.has_value(b._clean.hashes[total.task().key])   # the target's value stays


def test_an_evicted_value_is_a_miss_and_early_cutoff_spares_its_dependents(store_dir, calls):
    def define(b, offset):
        @b.rule
        def raw():
            calls.append("raw")
            return np.arange(100_000, dtype=np.float64)

        @b.rule
        def clean():
            calls.append("clean")
            return raw()[::2] + offset * 0

        @b.rule
        def report():
            calls.append("report")
            return float(clean().sum())
        return raw, clean, report

    with nbbuild.Build(store_dir, min_free=0) as b:
        raw, clean, report = define(b, 0)
        expected = from_scratch(report.task())
        calls.clear()
        assert report() == expected
        raw_hash = b._clean.hashes[raw.task().key]
        b.store.delete_values([raw_hash])              # evicted: its trace stays
        assert b.store.traces(raw.task().key)
    calls.clear()
    with nbbuild.Build(store_dir, min_free=0) as b:
        raw, clean, report = define(b, 1)      # clean edited: it runs, raw's value is gone so raw runs too
        assert report() == expected
        assert calls == ["clean", "raw"]        # clean gave the same value: report is spared
        assert b.store.has_value(raw_hash)


def test_a_value_larger_than_the_quota_is_used_not_stored_and_named_in_the_report(store_dir, calls):
    def define(b):
        @b.rule
        def big():
            calls.append("big")
            return np.ones(300_000)                  # 2.4 MB

        @b.rule
        def total():
            calls.append("total")
            return float(big().sum())
        return big, total

    with nbbuild.Build(store_dir, quota="1 MB", min_free=0) as b:
        big, total = define(b)
        assert total() == 300_000.0
        assert b.report.unstored == ["big()"]
        reason = dict((t.task, t.unstored) for t in b.report.tasks)["big()"]
        assert reason == "2.4 MB is more than the store's quota of 1.0 MB"
        assert b.store.stats()["values"] == 1       # total's
    calls.clear()
    with nbbuild.Build(store_dir, quota="1 MB", min_free=0) as b:
        big, total = define(b)
        assert total() == 300_000.0 and calls == []   # big's hash is known: total is up to date
        assert big().sum() == 300_000.0 and calls == ["big"]   # big's value itself must be made again


def test_the_free_space_floor_evicts_what_no_build_holds(store_dir, calls):
    with nbbuild.Build(store_dir, quota="unlimited", min_free=0) as b:
        a, c = _arrays(b, calls, [400_000, 400_000])
        b.build(a, c)
        assert b.store.stats()["values"] == 2
        b.store.min_free = b.store.free_space() + 10**12     # the disk is "too full" now
        b.build(a)
        left = {d for d, *_ in b.store.value_rows()}
        assert left == {b._clean.hashes[a.task().key]}        # a is held by the build; c went
        assert b.gc() == 1 and b.store.stats()["values"] == 0  # outside a build nothing is held


def test_lru_and_gdsf_choose_differently_what_goes(tmp_path, calls):
    """A cheap big value used recently, a dear small one used long ago: LRU drops the dear one,
    gdsf the cheap one."""
    chosen = {}
    for policy in ("lru", "gdsf"):
        store = tmp_path / policy
        with nbbuild.Build(store, quota="unlimited", min_free=0, eviction=policy) as b:
            @b.rule
            def dear():
                time.sleep(0.3)
                return np.zeros(250_000)        # 2 MB, 0.3 s

            @b.rule
            def cheap():
                return np.ones(500_000)         # 4 MB, no time

            b.build(dear)
            used = max(row[3] for row in b.store.value_rows())      # when dear was last used
            wait_until(lambda: time.time() > used, "the clock to pass dear's last use")
            b.build(cheap)                                          # used later: LRU's newer one
            b.store.quota = b.store.volume() - 10_000    # one of the two must go
            b.gc()
            chosen[policy] = "dear" if b.store.has_value(b._clean.hashes[cheap.task().key]) else "cheap"
    assert chosen == {"lru": "dear", "gdsf": "cheap"}


# ---------------------------------------------------------------- pruning

def test_traces_are_pruned_to_a_bounded_number_per_task_and_when_their_value_is_long_gone(store_dir):
    with nbbuild.Build(store_dir, min_free=0) as b:
        for version in range(20):
            ns = {"v": version}
            exec("def step():\n    return v\n", ns)
            step = b.rule(ns["step"])
            b.build(step)
        key = step.task().key
        assert b.store.stats()["traces"] == 20
        prune(b.store)
        assert b.store.stats()["traces"] == 16 and len(b.store.traces(key)) == 16
        old = b.store.traces(key)[5].result
        b.store.delete_values([old])                           # evicted now ...
        prune(b.store, now=time.time() + 31 * 86400)           # ... and a month later it is gone
        assert old not in {t.result for t in b.store.traces(key)}
        assert b.store.stats()["traces"] == 15
        newest = b.store.traces(key)[0].result
        b.store.delete_values([newest])
        prune(b.store, now=time.time() + 365 * 86400)
        assert b.store.traces(key)[0].result == newest         # a task's newest trace always stays


def test_file_entries_of_deleted_files_are_pruned(store_dir, tmp_path):
    path = tmp_path / "data.txt"
    path.write_text("1 2 3")
    with nbbuild.Build(store_dir, min_free=0) as b:
        @b.rule
        def words():
            return open(nbbuild.file(str(path))).read().split()
        b.build(words)
        b.store.flush()
        assert [k for k, _ in b.store.table.keys("f:")] == ["f:" + str(path)]
        path.unlink()
        prune(b.store)
        assert [k for k, _ in b.store.table.keys("f:")] == []


def test_during_a_build_older_values_make_room_before_the_quota_is_crossed(store_dir, calls):
    # LRU: which values are older is what this test is about. Under gdsf an old value whose body
    # happened to take longer (a busy machine) is dearer than a new one, and rightly stays.
    with nbbuild.Build(store_dir, quota="3.5 MB", min_free=0, workers=1, eviction="lru") as b:
        old = _arrays(b, calls, [10**6] * 3)
        b.build(*old)
        new = [b.rule(lambda i=i: np.full(125_000, 10.0 + i), name=f"new{i}") for i in range(3)]
        seen = []

        @b.rule
        def total():
            out = 0.0
            for r in new:
                out += float(r().sum())
                seen.append(b.store.volume() + b.store.pending_bytes())
            return out

        b.build(total)
        assert max(seen) <= 3.5e6          # old values went while the build ran, batched
        assert b.store.stats()["evictions"] >= 2
        held = {b._clean.hashes[r.task().key] for r in new}
        assert held <= {d for d, *_ in b.store.value_rows()}
