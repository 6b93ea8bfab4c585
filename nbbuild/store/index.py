"""The index: what a process knows of a store's traces and file stat entries, in memory.

Contract:
- `load()` reads every signed trace row (`t:`) and file entry (`f:`) in one select per prefix;
  `refresh()` adds the trace rows other processes wrote since (rows get ever higher rowids, and
  the table never hands a rowid out twice: the highest seen is a watermark for what is new).
  `refresh_if_changed()` does that only when the store changed since, looking at most every 50 ms.
- A fresh process reads the snapshot its key wrote (snapshot.py: one row for all the traces up
  to its watermark) and row by row only what came after. `keep_snapshot()`, at the end of a
  build, writes a new one when at least a few hundred traces (and an eighth of all) are not in
  the last: a store of a few dozen traces never has one.
- Per task key, at most 16 traces are kept, newest first. Traces of rules with policy "memory",
  and traces a failed write could not store, are kept in `memory` (this process only).
- A row signed by another key (signing.py: its key id is not ours) is another user's: it is never
  used and handed to `foreign` (the store reports it once and keeps it). A row with our key id
  whose signature does not match, or that cannot be decoded, is damaged: never used, it is
  handed to `reject` (the store reports it once and drops it).
"""
from __future__ import annotations

import time
from collections import defaultdict
from typing import Callable, Iterable

from . import snapshot
from .foreign import base
from .signing import Signer
from .table import Table
from ..engine.trace import Trace

__all__ = ["Index", "MAX_TRACES"]

MAX_TRACES = 16
_LOOK_SECONDS = 0.05
_DECODE_ERRORS = (ValueError, KeyError, TypeError, UnicodeDecodeError)
_SNAPSHOT_AFTER = 256       # traces not in the snapshot that make a new one worth its writing


class Index:
    def __init__(self, table: Table, signer: Signer, reject: Callable[[str], None],
                 foreign: Callable[[str], None] = lambda key: None):
        self.table, self.signer, self.reject, self.foreign = table, signer, reject, foreign
        self.traces: dict[str, list[Trace]] | None = None
        self.memory: dict[str, list[Trace]] = defaultdict(list)
        self.file_entries: dict[str, tuple[int, int, str, int]] | None = None
        self.watermark = 0
        self.own: set[str] = set()     # trace rows this process wrote and has not scanned since
        self._seen = 0                 # the highest rowid refresh_if_changed has looked at
        self._looked = 0.0
        self._beyond = 0               # traces known that the last snapshot does not hold
        self._foreign: list[str] = []  # rows another key signed, for the next snapshot

    def _scan(self, prefix: str, after: int = 0) -> Iterable[tuple[str, memoryview]]:
        for key, value, rowid, filename in self.table.scan(prefix, after):
            if rowid > self.watermark:
                self.watermark = rowid
            if key in self.own:
                self.own.discard(key)
                continue
            data = self.signer.open(key, value) if filename is None and type(value) is bytes else None
            if data is None:
                if filename is None and type(value) is bytes and self.signer.foreign(value):
                    self._foreign.append(key)
                    self.foreign(key)
                else:
                    self.reject(key)
                continue
            yield key, data

    def load(self) -> None:
        self.own.clear()
        entries = {}
        # file entries first: a trace row written between the two selects is then above the
        # watermark (read by the next refresh), not below it and missed for good
        for key, data in self._scan("f:"):
            try:
                size, mtime, digest, seen = data.tobytes().decode().split(" ")
                entries[base(key)[2:]] = (int(size), int(mtime), digest, int(seen))
            except ValueError:
                self.reject(key)
        kept = snapshot.read(self.table, self.signer)
        traces: dict[str, list[Trace]] = defaultdict(list)
        after, self._beyond, self._foreign = 0, 0, []
        if kept is not None:
            traces.update(kept.traces)
            after, self.watermark, self._foreign = kept.watermark, max(self.watermark, kept.watermark), list(kept.foreign)
            for key in kept.foreign:
                self.foreign(key)
        for key, data in self._scan("t:", after):
            try:
                tr = Trace.decode(data.tobytes())
            except _DECODE_ERRORS:
                self.reject(key)
                continue
            lst = traces[tr.key]
            if kept is not None:          # the snapshot may hold what its writer wrote above it
                ident = tr.ident
                lst[:] = [t for t in lst if t.ident != ident]
            lst.append(tr)
            self._beyond += 1
        for lst in traces.values():
            lst.sort(key=lambda t: t.created, reverse=True)
            del lst[MAX_TRACES:]
        self.traces = dict(traces)
        self.file_entries = entries

    def keep_snapshot(self) -> None:
        """After a build, with its rows committed: snapshot the traces when enough are not in the
        last snapshot (snapshot.py). Others' rows since are read first, so that it holds every
        trace row up to the watermark."""
        if self.traces is None:
            return
        total = sum(len(lst) for lst in self.traces.values())
        if self._beyond < max(_SNAPSHOT_AFTER, total // 8):
            return
        self.refresh()
        watermark = self.watermark
        snapshot.write(self.table, self.signer, snapshot.Snapshot(
            watermark, snapshot.covered(self.table, watermark), self.traces, tuple(self._foreign)))
        self._beyond = 0

    def refresh(self) -> None:
        if self.traces is None:
            self.load()
            return
        for key, data in self._scan("t:", self.watermark):
            try:
                self.add(Trace.decode(data.tobytes()))
            except _DECODE_ERRORS:
                self.reject(key)

    def changed(self) -> bool:
        """Whether any process wrote to the store since the last look (throttled: a first build
        of many small tasks would otherwise ask for every one)."""
        now = time.monotonic()
        if now - self._looked < _LOOK_SECONDS:
            return False
        self._looked = now
        top = self.table.last_rowid()
        if top <= self._seen:
            return False
        self._seen = top
        return True

    def add(self, tr: Trace) -> None:
        if self.traces is None:
            self.load()
        assert self.traces is not None      # load() made it
        lst = self.traces.setdefault(tr.key, [])
        self._beyond += 1
        ident = tr.ident
        lst[:] = [t for t in lst if t.ident != ident]
        lst.insert(0, tr)
        lst.sort(key=lambda t: t.created, reverse=True)
        del lst[MAX_TRACES:]

    def remember(self, trace: Trace) -> None:
        lst = self.memory[trace.key]
        lst[:] = [t for t in lst if t.ident != trace.ident]
        lst.insert(0, trace)
        del lst[MAX_TRACES:]

    def forget(self, row: str) -> None:
        """Drop the trace of row `t:<key>#<ident>` from the persisted index."""
        key, _, ident = base(row)[2:].rpartition("#")
        lst = (self.traces or {}).get(key)
        if lst:
            lst[:] = [t for t in lst if t.ident != ident]

    def clear(self) -> None:
        self.traces, self._beyond, self._foreign = None, 0, []
        self.file_entries = None
        self.memory.clear()
