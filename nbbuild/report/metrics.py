"""What builds cost and saved: figures for the last build and for the session (one Build object's
lifetime), kept by the Build and read by views (`%nbbuild metrics`, the dashboard).

Contract:
- `Session.add(report, store_delta, runs)` is called once per top-level build that got as far as a
  report (failed builds included); `store_delta` is what the store counted during that build
  (hits, misses, bytes read and written, evictions), `runs` the (rule name, seconds) of each body
  that ran.
- `Session.metrics(stats)` returns a frozen `Metrics`: `last` and `session` `Figures`, the
  `slowest` rules of the session by total run time, and the store's `stats` as given.
- Nothing here touches the store: the Build passes what it counted.
"""
from __future__ import annotations

import threading
from collections import defaultdict
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Iterable

if TYPE_CHECKING:
    from .report import BuildReport

__all__ = ["Figures", "Metrics", "RuleTime", "Session"]

_STORE_COUNTERS = ("hits", "misses", "bytes_read", "bytes_written", "evictions")


@dataclass(frozen=True)
class Figures:
    builds: int = 0
    ran: int = 0
    verified: int = 0         # reused because a trace still matched
    constructed: int = 0      # reused from an older trace (an edit was reverted)
    failed: int = 0
    skipped: int = 0
    seconds: float = 0.0      # wall time of the builds
    saved_seconds: float = 0.0
    hits: int = 0
    misses: int = 0
    bytes_read: int = 0
    bytes_written: int = 0
    evictions: int = 0

    @property
    def reused(self) -> int:
        return self.verified + self.constructed

    @property
    def hit_rate(self) -> float | None:
        """Of the tasks checked that keep stored values, the share reused (None: none checked)."""
        asked = self.hits + self.misses
        return self.hits / asked if asked else None

    def __add__(self, other: Figures) -> Figures:
        return Figures(**{f: getattr(self, f) + getattr(other, f) for f in self.__dataclass_fields__})


@dataclass(frozen=True)
class RuleTime:
    rule: str
    runs: int
    seconds: float


@dataclass(frozen=True)
class Metrics:
    last: Figures | None
    session: Figures
    slowest: tuple[RuleTime, ...]
    stats: dict = field(default_factory=dict)


class Session:
    def __init__(self) -> None:
        self.last: Figures | None = None
        self.total = Figures()
        self._rules: dict[str, list[float]] = defaultdict(lambda: [0, 0.0])
        self._lock = threading.Lock()

    def add(self, report: BuildReport, store_delta: dict[str, int], runs: Iterable[tuple[str, float]]) -> Figures:
        verified = len(report.reused) - len(report.constructed)
        fig = Figures(1, len(report.executed), verified, len(report.constructed), len(report.failed),
                      len(report.skipped), report.seconds, report.saved_seconds,
                      **{k: int(store_delta.get(k, 0)) for k in _STORE_COUNTERS})
        with self._lock:
            self.last = fig
            self.total = self.total + fig
            for rule, seconds in runs:
                entry = self._rules[rule]
                entry[0] += 1
                entry[1] += seconds
        return fig

    def evicted(self, n: int) -> None:
        """Evictions outside a build (gc, a lowered quota) count for the session."""
        if n:
            with self._lock:
                self.total = replace(self.total, evictions=self.total.evictions + n)

    def metrics(self, stats: dict, top: int = 5) -> Metrics:
        with self._lock:
            rules = sorted(self._rules.items(), key=lambda kv: -kv[1][1])[:top]
            return Metrics(self.last, self.total,
                           tuple(RuleTime(name, int(n), s) for name, (n, s) in rules), dict(stats))
