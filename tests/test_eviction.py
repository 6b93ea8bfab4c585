"""Quota parsing and eviction."""
from __future__ import annotations

import pytest

from nbbuild import hashing
from nbbuild.eviction import evict, parse_size
from nbbuild.store import Store


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
        ser = hashing.pickle_value(bytes([i]) * 100_000)
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
