"""Quota parsing and eviction."""
from __future__ import annotations

import pytest

from nbbuild.eviction import evict, parse_size
from nbbuild.store import Store


@pytest.mark.parametrize("text,expected", [
    ("2 GB", 2 * 10**9), ("500MB", 500 * 10**6), ("1.5 GiB", int(1.5 * 2**30)), (1024, 1024),
    ("10", 10), (None, None),
])
def test_sizes_are_read(text, expected):
    assert parse_size(text) == expected


@pytest.mark.parametrize("bad", ["lots", "5 XB", "-1", True, -5])
def test_bad_sizes_say_what_is_accepted(bad):
    with pytest.raises(ValueError):
        parse_size(bad)


def test_eviction_goes_under_quota_and_spares_what_the_build_holds(tmp_path):
    s = Store(tmp_path)
    for i in range(10):
        s.put_value(f"h{i}", bytes(1000))
        s.flush()
    removed = evict(s, 4500, lambda: {"h0", "h1"})
    left = {h for h, _, _ in s.value_sizes()}
    assert removed == 6 and {"h0", "h1"} <= left and len(left) == 4
    assert s.stats()["evictions"] == 6
    assert evict(s, None) == 0
    s.close()
