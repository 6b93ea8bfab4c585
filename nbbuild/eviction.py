"""Quota and eviction.

Contract:
- `parse_size("2 GB")` reads sizes: a number of bytes, or a number with a unit (B, KB, MB, GB, TB
  in powers of 1000; KiB, MiB, GiB, TiB in powers of 1024). Anything else is a RuleError-free
  ValueError whose message says what is accepted.
- `evict(store, quota, keep)` removes values, oldest stored first, until the values fit in `quota`
  bytes, never one whose hash is in `keep` (the values the current build holds or produced).
  Traces are kept: an evicted value is a miss that re-runs its task, and early cutoff then spares
  its dependents. Returns the number of values removed.
"""
from __future__ import annotations

import re
from typing import Callable

__all__ = ["parse_size", "evict"]

_UNITS = {"": 1, "B": 1, "KB": 10**3, "MB": 10**6, "GB": 10**9, "TB": 10**12,
          "K": 10**3, "M": 10**6, "G": 10**9, "T": 10**12,
          "KIB": 2**10, "MIB": 2**20, "GIB": 2**30, "TIB": 2**40}
_SIZE = re.compile(r"^\s*([0-9]*\.?[0-9]+)\s*([A-Za-z]*)\s*$")


def parse_size(size: int | float | str | None) -> int | None:
    if size is None:
        return None
    if isinstance(size, bool):
        raise ValueError(f"size {size!r}: give bytes or a string such as '2 GB'")
    if isinstance(size, (int, float)):
        if size < 0:
            raise ValueError(f"size {size!r} is negative")
        return int(size)
    m = _SIZE.match(str(size))
    if not m or m.group(2).upper() not in _UNITS:
        raise ValueError(f"size {size!r} not understood: give bytes or a string such as '500 MB' or '2 GiB'")
    return int(float(m.group(1)) * _UNITS[m.group(2).upper()])


def evict(store, quota: int | None, keep: Callable[[], set[str]] = frozenset) -> int:  # type: ignore[assignment]
    """`keep()` gives the hashes that must stay; it is called only when something must go."""
    if quota is None:
        return 0
    store.flush()
    if store.volume() <= quota:   # the whole store fits: no need to look at each value
        return 0
    sizes = store.value_sizes()
    total = sum(size for _, size, _ in sizes)
    if total <= quota:
        return 0
    held = keep()
    removed = 0
    for digest, size, _ in sorted(sizes, key=lambda r: r[2]):
        if total <= quota:
            break
        if digest in held:
            continue
        if store.delete_value(digest):
            total -= size
            removed += 1
    if removed:
        store.count("evictions", removed)
        store.flush()
    return removed
