"""Eviction in the shared tier: its values within a quota of its own, its packs merged.

The shared tier (shared.py) has no process watching over it, so it is looked after on demand
(`nbbuild store gc --shared`, `Build.shared_gc`), from any machine of the team.

Contract:
- `survey(tier)` reads every pack and lists every value object (two listings, one batch of
  reads): a `Survey` of the values (size, when stored), the traces, and what each value costs to
  compute again (the longest run that produced it) and when it was last uploaded with a trace.
- `collect(tier, quota, policy)` removes values, lowest priority first under the store's policies
  (eviction.py: "gdsf" weighs recompute seconds by bytes, "lru" by last upload), until the tier
  holds at most 90% of `quota` (None: no value is removed). A value stored in the last
  `grace` seconds is never removed: a writer may be uploading the trace that names it. Then
  the packs read are merged into one, without the markers of removed values; the new pack is
  written before the old ones are removed, so a reader meanwhile sees each row at least once
  (a duplicate trace is the same trace). Packs written during the collection are left alone.
- A trace whose value was removed stays: a miss that runs its task, as in the local store.
"""
from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field

from .eviction import LOW_WATER, Candidate, order
from .shared import SharedTier
from ..engine.trace import MISSING, Trace

__all__ = ["Survey", "survey", "collect"]

log = logging.getLogger("nbbuild")
GRACE_SECONDS = 3600.0


@dataclass(frozen=True)
class Survey:
    values: dict[str, tuple[int, float]]          # hash -> (bytes, when stored)
    packs: list[str]
    rows: list[tuple[str, bytes]]
    traces: int
    cost: dict[str, float] = field(default_factory=dict)       # hash -> seconds to compute again
    used: dict[str, float] = field(default_factory=dict)       # hash -> last upload with a trace
    uses: dict[str, int] = field(default_factory=dict)

    @property
    def volume(self) -> int:
        return sum(size for size, _ in self.values.values())


def _pack_time(name: str) -> float:
    try:
        return int(name.split("-", 1)[0]) / 1e9
    except ValueError:
        return 0.0


def survey(tier: SharedTier) -> Survey:
    values = tier.values()
    packs, rows, sources = tier.rows_by_pack(set())
    cost: dict[str, float] = {}
    used: dict[str, float] = {}
    uses: dict[str, int] = {}
    traces = 0
    for (key, data), pack in zip(rows, sources):
        if not key.startswith("t:"):
            continue
        try:
            tr = Trace.decode(data)
        except (ValueError, KeyError, TypeError, UnicodeDecodeError):
            continue
        traces += 1
        when = _pack_time(pack)
        for digest in (tr.result, *(copy for _, _, copy in tr.outputs if copy != MISSING)):
            cost[digest] = max(cost.get(digest, 0.0), tr.seconds)
            used[digest] = max(used.get(digest, 0.0), when)
            uses[digest] = uses.get(digest, 0) + 1
    return Survey(values, packs, rows, traces, cost, used, uses)


def collect(tier: SharedTier, quota: int | None, policy: str = "gdsf",
            grace: float = GRACE_SECONDS, now: float | None = None) -> tuple[int, int, int]:
    """(values removed, bytes freed, packs merged)."""
    now = time.time() if now is None else now
    found = survey(tier)
    gone: list[str] = []
    freed = 0
    if quota is not None and found.volume > quota:
        excess = found.volume - int(quota * LOW_WATER)
        candidates = [Candidate(d, size, stored, found.used.get(d, stored), found.uses.get(d, 0), 0.0,
                                found.cost.get(d, 0.0))
                      for d, (size, stored) in found.values.items() if now - stored >= grace]
        for c in order(policy, candidates):
            if freed >= excess:
                break
            gone.append(c.digest)
            freed += c.size
        tier.remove_values(gone)
    removed = set(gone)
    merged = 0
    if len(found.packs) > 1 or removed:
        keep = [(k, d) for k, d in found.rows if not (k.startswith("v:") and k[2:] in removed)]
        tier.put_rows(_unique(keep))
        tier.remove_packs(found.packs)
        merged = len(found.packs)
    if gone:
        log.info("nbbuild: removed %d values (%d bytes) from the shared store %s", len(gone), freed, tier.url)
    return len(gone), freed, merged


def _unique(rows: list[tuple[str, bytes]]) -> list[tuple[str, bytes]]:
    """Rows once each, the newest of a name last written (an attachment rewritten)."""
    latest: dict[str, bytes] = {}
    for key, data in rows:
        latest.pop(key, None)
        latest[key] = data
    return list(latest.items())
