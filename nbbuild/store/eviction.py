"""Quota, eviction and pruning: the store stays within its bounds.

Contract:
- `parse_size("2 GB")` reads sizes: bytes, or a number with a unit (B, KB, MB, GB, TB in powers
  of 1000; KiB, MiB, GiB, TiB in powers of 1024); "none" or "unlimited" is no limit (None).
  Anything else is a ValueError whose message says what is accepted.
- `size(value, name)` and `policy(value, name)` validate a setting (a Build's argument, an NBBUILD_*
  variable, a later change of the store's bounds): bytes (math.inf for no limit) and a policy's
  name in lower case; anything else is a SettingError naming `name`, the value and what is accepted.
- `Bounds`, a part of Store (mixed in): its `quota` (bytes, None: no limit), `min_free` (bytes of
  free disk to keep, 0: no floor) and `policy`, each validated when set (a number, `2 GB`,
  `unlimited`; `LRU`): a bad value is a SettingError and changes nothing.
- `resolve(store, quota, min_free, policy, settings)` sets the store's bounds, first found wins: the
  argument, then the environment as read (settings.py: NBBUILD_QUOTA, NBBUILD_MIN_FREE, NBBUILD_EVICTION), then what
  `%nbbuild store --quota` saved in the store, then the defaults: a quota of 10% of the disk space
  the store could use (free space plus what it holds), at most 20 GB; a floor of free disk space
  of 5% of the disk, at most 2 GB; the policy "gdsf".
- `evict(store, held)` runs after each build: when the store is over its quota, or the disk's free
  space under the floor, it removes values until the store is at 90% of its quota (batched) and
  the floor is met again. `make_room(store, need)` does the same during a build before a value
  of `need` bytes is written. Values whose hash is in `held()` are never removed: during a build,
  those it may still have to load (it knows them only by hash); after it, its targets' values.
  What a build holds in memory is ordered by the policy like the rest. Traces are kept: an
  evicted value is a miss that re-runs its task, and early cutoff then spares its dependents.
- Policies order the candidates: "lru" (least recently used first) and "gdsf" (GreedyDual-Size-
  Frequency: priority = clock + uses * recompute seconds / bytes, lowest first; the clock rises to
  each evicted value's priority, so values not used for long age out). Recompute seconds come
  from the traces that produced the value (or the copy of a file their run wrote).
- `prune(store)` bounds the metadata: at most 16 traces per task; traces (but a task's newest)
  whose value was evicted over 30 days ago, or is gone and was made that long ago; attachments
  and eviction notes nobody refers to; file entries of files that are gone; stray files. Rows
  another key signed (foreign.py) are neither evicted nor pruned: they are not this key's to judge;
  nor is a value of this key that another key cosigned (its entry depends on those bytes).
"""
from __future__ import annotations

import logging
import math
import os
import re
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Callable, Iterable

from ..errors import SettingError
from .foreign import base

if TYPE_CHECKING:
    from ..settings import Settings

__all__ = ["parse_size", "size", "policy", "Bounds", "resolve", "evict", "make_room", "prune", "Candidate", "POLICIES", "order",
           "DEFAULT_SHARE", "DEFAULT_CAP", "LOW_WATER"]

log = logging.getLogger("nbbuild")

DEFAULT_SHARE, DEFAULT_CAP = 0.10, 20 * 10**9
FLOOR_SHARE, FLOOR_CAP = 0.05, 2 * 10**9
LOW_WATER = 0.9
_CHECK_BYTES = 4 << 20       # during a build, look at the bounds after this much was written
_MIN_COST = 1e-3             # a run that took "no time" still costs a load of its inputs
_PRUNE_SECONDS = 3600.0

_UNITS = {"": 1, "B": 1, "KB": 10**3, "MB": 10**6, "GB": 10**9, "TB": 10**12,
          "K": 10**3, "M": 10**6, "G": 10**9, "T": 10**12,
          "KIB": 2**10, "MIB": 2**20, "GIB": 2**30, "TIB": 2**40}
_SIZE = re.compile(r"^\s*([0-9]*\.?[0-9]+)\s*([A-Za-z]*)\s*$")
_NO_LIMIT = {"none", "unlimited", "off", "inf"}


def parse_size(size: int | float | str | None) -> int | None:
    if size is None:
        return None
    if isinstance(size, bool):
        raise ValueError(f"size {size!r}: give bytes or a string such as '2 GB'")
    if isinstance(size, (int, float)):
        if size < 0 or math.isnan(size):
            raise ValueError(f"size {size!r} is negative")
        return None if math.isinf(size) else int(size)
    if str(size).strip().lower() in _NO_LIMIT:
        return None
    m = _SIZE.match(str(size))
    if not m or m.group(2).upper() not in _UNITS:
        raise ValueError(f"size {size!r} not understood: give bytes or a string such as '500 MB' or '2 GiB'"
                         " ('unlimited' for no limit)")
    return int(float(m.group(1)) * _UNITS[m.group(2).upper()])


# ---------------------------------------------------------------- bounds

def size(value: Any, name: str) -> int | float:
    """Bytes (`2 GB`, `500MB`, `2 GiB`, a number), or math.inf for no limit (`unlimited`, `none`).
    `name` says who gave it (`NBBUILD_QUOTA`, `min_free`), for the message."""
    try:
        found = parse_size(value)
    except ValueError as e:
        raise SettingError(f"{name}: {e}") from None
    return math.inf if found is None else found


def policy(value: Any, name: str | None = None) -> str:
    """An eviction policy's name (POLICIES), in any case."""
    found = str(value).strip().lower()
    if found not in POLICIES:
        raise SettingError(f"{name + ': ' if name else ''}eviction policy {value!r} not known: "
                           f"use one of {', '.join(sorted(POLICIES))}")
    return found


class Bounds:
    """A part of Store: its bounds, validated when set."""

    def __init__(self, quota: int | str | None = None):
        self._quota: int | None = None
        self._min_free = 0
        self._policy = "gdsf"
        self.quota = quota

    @property
    def quota(self) -> int | None:
        return self._quota

    @quota.setter
    def quota(self, value: int | str | None) -> None:
        found = size(value, "quota")
        self._quota = None if found == math.inf else int(found)

    @property
    def min_free(self) -> int:
        return self._min_free

    @min_free.setter
    def min_free(self, value: int | str | None) -> None:
        found = size(value, "min_free")
        self._min_free = 0 if found == math.inf else int(found)

    @property
    def policy(self) -> str:
        return self._policy

    @policy.setter
    def policy(self, value: str) -> None:
        self._policy = policy(value)


def resolve(store: Any, quota: Any, min_free: Any, eviction: str | None, settings: Settings) -> None:
    """Set store.quota, store.min_free, store.policy and store.quota_source from the arguments,
    else the settings read from the environment, else the saved quota, else the defaults. Raises
    SettingError (naming the argument) for a bad argument; the settings were checked when read."""
    if quota is not None:
        store.quota, store.quota_source = size(quota, "quota"), "set for this Build"
    elif settings.quota is not None:
        store.quota, store.quota_source = settings.quota, "NBBUILD_QUOTA"
    elif store.setting("quota") is not None:
        store.quota = size(store.setting("quota"), "the quota saved in the store")
        store.quota_source = "saved in the store (%nbbuild store --quota)"
    else:
        room = store.free_space() + store.volume()
        store.quota = int(min(DEFAULT_CAP, DEFAULT_SHARE * room))
        store.quota_source = "default: 10% of the disk space the store could use, at most 20 GB"
    if min_free is not None:
        store.min_free = size(min_free, "min_free")
    elif settings.min_free is not None:
        store.min_free = settings.min_free
    else:
        store.min_free = int(min(FLOOR_CAP, FLOOR_SHARE * _disk_total(store.path)))
    store.policy = policy(eviction) if eviction else settings.eviction or "gdsf"


def _disk_total(path: str) -> int:
    try:
        st = os.statvfs(path)
        return st.f_blocks * st.f_frsize
    except OSError:
        return 0


# ---------------------------------------------------------------- policies

@dataclass(frozen=True)
class Candidate:
    digest: str
    size: int
    stored: float       # when it was stored
    used: float         # when it was last used
    uses: int
    credit: float       # the gdsf clock when it was last used
    cost: float         # seconds to compute it again


def _lru(c: Candidate) -> float:
    return c.used


def _gdsf(c: Candidate) -> float:
    return c.credit + max(c.uses, 1) * max(c.cost, _MIN_COST) / max(c.size, 1)


POLICIES: dict[str, Callable[[Candidate], float]] = {"lru": _lru, "gdsf": _gdsf}


def order(policy: str, candidates: Iterable[Candidate]) -> list[Candidate]:
    """Candidates in eviction order: the first is the first to go."""
    return sorted(candidates, key=POLICIES[policy])


def _costs(store) -> dict[str, float]:
    costs: dict[str, float] = {}
    for lst in store.traces_index().values():
        for tr in lst:
            # a copy of a file the run wrote (engine/outputs.py) costs the run, as its value does
            for digest in (tr.result, *(copy for _, _, copy in tr.outputs)) if tr.outputs else (tr.result,):
                if tr.seconds > costs.get(digest, -1.0):
                    costs[digest] = tr.seconds
    return costs


# ---------------------------------------------------------------- eviction

def _excess(store, need: int) -> int:
    """Bytes to free before `need` more are written; 0 when the store is within its bounds."""
    over = 0
    if store.quota is not None:
        volume = store.volume() + store.pending_bytes()
        if volume + need > store.quota:
            over = volume + need - int(store.quota * LOW_WATER)
    if store.min_free:
        free = store.free_space()
        if free - need < store.min_free:
            over = max(over, store.min_free + need - free)
    return over


def evict(store, held: Callable[[], set[str]] = frozenset, need: int = 0) -> int:  # type: ignore[assignment]
    """Bring the store within its bounds (with room for `need` more bytes). `held()` gives the
    hashes that must stay; it is called only when something must go. Returns how many went."""
    store.written = 0
    excess = _excess(store, need)
    if excess <= 0:
        return 0
    keep = held() | store.shared_values()
    costs = _costs(store)
    candidates = [Candidate(d, size, stored, used, uses, credit, costs.get(d, 0.0))
                  for d, size, stored, used, uses, credit in store.value_rows() if d not in keep]
    victims: list[Candidate] = []
    freed = 0
    for c in order(store.policy, candidates):
        if freed >= excess:
            break
        victims.append(c)
        freed += max(c.size, 1)
    if not victims:
        return 0
    store.delete_values([c.digest for c in victims])
    if store.policy == "gdsf":
        store.clock = max(store.clock, max(_gdsf(c) for c in victims))
        store.set_setting("clock", store.clock)
    store.count("evictions", len(victims))
    store.flush(counters_too=True)
    log.info("nbbuild: evicted %d values (%d bytes) from %s", len(victims), freed, store.path)
    return len(victims)


def make_room(store, need: int) -> None:
    """Called before a value of `need` bytes is written during a build: evicts, batched, when
    the value would take the store over its quota or the disk under its floor."""
    if need < _CHECK_BYTES // 16 and store.written < _CHECK_BYTES:
        return
    evict(store, store.held, need)


# ---------------------------------------------------------------- pruning

def prune(store, keep: int = 16, evicted_for: float = 30 * 86400.0, now: float | None = None) -> int:
    """Drop metadata nothing needs any more; returns how many rows went."""
    now = time.time() if now is None else now
    store.refresh()
    index = store.traces_index()
    present = {d for d, *_ in store.value_rows()}
    marks = dict(store.table.marks())
    drop: list[str] = []
    wanted: set[tuple[str, str]] = set()   # (task key, result) of the traces that stay
    theirs: set[str] = set()               # another key's rows: kept, whatever they say

    def own(prefix: str) -> list[tuple[str, int]]:
        found = []
        for row, value, rowid, filename in store.table.scan(prefix):
            if store.owner(row, value, filename) == "foreign":
                theirs.add(row)
            else:
                found.append((row, rowid))
        return found

    for row, rowid in own("t:"):
        key, _, ident = base(row)[2:].rpartition("#")
        lst = index.get(key, [])
        pos = next((i for i, t in enumerate(lst) if t.ident == ident), None)
        if pos is None:
            # not in the index: beyond the newest of its task, unless another process wrote it since
            if rowid <= store.watermark:
                drop.append(row)
            continue
        tr = lst[pos]
        gone = tr.result not in present and not tr.result.startswith("u:")
        since = marks.get(tr.result, tr.created)
        if pos >= keep or (pos > 0 and gone and now - since > evicted_for):
            drop.append(row)
        else:
            wanted.add((key, tr.result))
    results = {r for _, r in wanted}
    drop += [row for row, _ in own("a:") if tuple(base(row)[2:].rsplit("#", 1)) not in wanted]
    store.flush()
    drop += [row for row, _ in own("f:") if not os.path.exists(base(row)[2:])]
    # a cosignature of a value that is gone, or that this key now holds itself
    drop += [row for row, _ in own("c:") if row[2:].partition("#")[0] not in present
             or not store.owner("v:" + row[2:].partition("#")[0], *(store.table.get("v:" + row[2:].partition("#")[0])
                                                                   or (None, None))) == "foreign"]
    # an eviction note another key's traces may refer to stays, unless its value is back
    drop += ["x:" + d for d in marks if d in present or (d not in results and not theirs)]
    if drop:
        store.delete_rows(drop)
    store.forget_traces({row for row in drop if row.startswith("t:")})
    store.sweep_files()
    store.set_setting("pruned", now)
    return len(drop)


def maybe_prune(store) -> int:
    """prune() at most once an hour per store (whichever process gets there)."""
    last = store.setting("pruned")
    if last is None:         # a new store has nothing to prune: start counting from now
        store.set_setting("pruned", time.time())
        return 0
    if time.time() - float(last) < _PRUNE_SECONDS:
        return 0
    return prune(store)
