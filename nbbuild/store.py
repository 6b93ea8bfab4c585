"""The store: values and build information (traces, file stat entries, counters) in one diskcache.

Contract:
- Values are content-addressed: row `v:<hash>` holds the serialized value whose xxh3_128 is <hash>.
  A value row is never overwritten (which also spares diskcache readers a spurious miss).
- Each trace is its own immutable row `t:<task key>#<trace ident>`, so processes sharing a store
  never read-modify-write one another's rows. A trace is written after (or with) its value.
- Traces and file stat entries are read in bulk, one SQL select per prefix, into an in-memory index;
  `refresh()` picks up rows other processes wrote since (by store_time).
- Writes are buffered and committed in batches inside `cache.transact()`, small rows with one
  executemany in diskcache's row format; `flush()` commits now.
- diskcache's own eviction is off: nothing is culled behind nbbuild's back (eviction.py decides).
- Traces of rules with policy "memory" live in this object only.
- Row `a:<task key>#<value hash>` holds what the run that gave that value attached (trace.attach).
"""
from __future__ import annotations

import logging
import os
import sqlite3
import threading
import time
from collections import defaultdict
from typing import Any, Iterable

import diskcache

from . import files
from .trace import Trace

__all__ = ["Store"]

log = logging.getLogger("nbbuild")
_MAX_TRACES = 16
_FLUSH_ITEMS = 2000
_FLUSH_BYTES = 64 << 20
_DIRECT_BYTES = 1 << 20
_COUNTER_SECONDS = 5.0


def _prefix_range(prefix: str) -> tuple[str, str]:
    return prefix, prefix[:-1] + chr(ord(prefix[-1]) + 1)


class Store:
    def __init__(self, path: str | os.PathLike, quota: int | None = None):
        self.path = os.path.abspath(os.fspath(path))
        os.makedirs(self.path, mode=0o700, exist_ok=True)
        self.quota = quota
        self._cache = diskcache.Cache(self.path, eviction_policy="none", size_limit=2 ** 62,
                                      cull_limit=0, statistics=False)
        files.exclude(self.path)
        self._lock = threading.RLock()
        self._traces: dict[str, list[Trace]] | None = None
        self.memory_traces: dict[str, list[Trace]] = defaultdict(list)
        self._file_entries: dict[str, tuple[int, int, str, int]] | None = None
        self._watermark = 0
        self._own: set[str] = set()     # trace rows this process wrote and has not scanned since
        self._pending: dict[str, bytes] = {}
        self._pending_bytes = 0
        self._counters: dict[str, int] = defaultdict(int)
        self._counted = time.monotonic()
        self.generation = 0      # bumped by clear(): what a process remembers of the store is void

    # ------------------------------------------------------------ bulk reads

    def _scan(self, prefix: str, after: int = 0) -> Iterable[tuple[str, bytes, int]]:
        """Rows under `prefix` with a rowid above `after`. SQLite gives new rows higher rowids
        (writers are serialised), so the highest rowid seen is a watermark for what is new."""
        lo, hi = _prefix_range(prefix)
        rows = self._cache._sql(
            "SELECT key, mode, filename, value, rowid FROM Cache"
            " WHERE key >= ? AND key < ? AND raw = 1 AND rowid > ?", (lo, hi, after)).fetchall()
        disk = self._cache._disk
        for key, mode, filename, value, rowid in rows:
            if rowid > self._watermark:
                self._watermark = rowid
            if key in self._own:
                self._own.discard(key)
                continue
            if filename is None and type(value) is bytes:   # an inline blob: nothing to fetch
                yield key, value, rowid
                continue
            try:
                data = disk.fetch(mode, filename, value, False)
            except (OSError, ValueError):  # a row whose file is gone: a miss, not a crash
                log.warning("nbbuild store: unreadable row %s skipped", key)
                continue
            yield key, data, rowid

    def _load(self) -> None:
        self._own.clear()
        traces: dict[str, list[Trace]] = defaultdict(list)
        for _, data, _ in self._scan("t:"):
            try:
                tr = Trace.decode(data)
            except (ValueError, KeyError, TypeError):
                log.warning("nbbuild store: a damaged trace row was skipped")
                continue
            traces[tr.key].append(tr)
        for lst in traces.values():
            lst.sort(key=lambda t: t.created, reverse=True)
        entries = {}
        for key, data, _ in self._scan("f:"):
            size, mtime, digest, seen = data.decode().split(" ")
            entries[key[2:]] = (int(size), int(mtime), digest, int(seen))
        self._traces = dict(traces)
        self._file_entries = entries

    def refresh(self) -> None:
        """Load the index, or add what other processes wrote since the last look."""
        with self._lock:
            if self._traces is None:
                self._load()
                return
            for _, data, _ in self._scan("t:", self._watermark):
                try:
                    tr = Trace.decode(data)
                except (ValueError, KeyError, TypeError):
                    continue
                self._index(tr)

    def _index(self, tr: Trace) -> None:
        lst = self._traces.setdefault(tr.key, [])  # type: ignore[union-attr]
        ident = tr.ident
        lst[:] = [t for t in lst if t.ident != ident]
        lst.insert(0, tr)
        lst.sort(key=lambda t: t.created, reverse=True)
        del lst[_MAX_TRACES:]

    # ------------------------------------------------------------ traces

    def traces(self, key: str, persist: bool = True) -> list[Trace]:
        if not persist:
            return self.memory_traces.get(key, [])
        if self._traces is None:
            self.refresh()
        return self._traces.get(key, [])  # type: ignore[union-attr]

    def traces_index(self) -> dict[str, list[Trace]]:
        """The live index of persisted traces, key -> traces newest first (read-only to callers)."""
        if self._traces is None:
            self.refresh()
        return self._traces  # type: ignore[return-value]

    def any_trace(self, key: str) -> Trace | None:
        lst = self.traces(key) or self.memory_traces.get(key)
        return lst[0] if lst else None

    def record(self, trace: Trace, persist: bool = True) -> None:
        with self._lock:
            if not persist:
                lst = self.memory_traces[trace.key]
                lst[:] = [t for t in lst if t.ident != trace.ident]
                lst.insert(0, trace)
                del lst[_MAX_TRACES:]
                return
            if self._traces is None:
                self._load()
            self._index(trace)
            row = f"t:{trace.key}#{trace.ident}"
            self._own.add(row)
            self._write(row, trace.encode())

    # ------------------------------------------------------------ values

    def put_value(self, digest: str, blob: bytes) -> None:
        key = "v:" + digest
        if len(blob) >= _DIRECT_BYTES:
            self.flush()
            self._cache.add(key, blob)
            self._counters["bytes_written"] += len(blob)
            return
        with self._lock:
            if key not in self._pending:
                self._write(key, blob)

    def get_value(self, digest: str) -> bytes | None:
        key = "v:" + digest
        with self._lock:
            blob = self._pending.get(key)
        if blob is None:
            blob = self._cache.get(key)
        if blob is not None:
            self._counters["bytes_read"] += len(blob)
        return blob

    def value_size(self, digest: str) -> int | None:
        """Stored bytes of a value, or None when it is not stored."""
        key = "v:" + digest
        with self._lock:
            blob = self._pending.get(key)
        if blob is not None:
            return len(blob)
        row = self._cache._sql("SELECT CASE WHEN filename IS NULL THEN length(value) ELSE size END FROM Cache"
                               " WHERE key = ? AND raw = 1", (key,)).fetchone()
        return int(row[0]) if row is not None else None

    def has_value(self, digest: str) -> bool:
        key = "v:" + digest
        return key in self._pending or key in self._cache

    def delete_value(self, digest: str) -> bool:
        with self._lock:
            self._pending.pop("v:" + digest, None)
        return self._cache.delete("v:" + digest)

    # ------------------------------------------------------------ attachments

    def put_attachment(self, key: str, digest: str, blob: bytes) -> None:
        """What the run of task `key` that gave value `digest` attached (rewritten by a later run
        giving the same value: the row says which run's attachment, not what the value is)."""
        with self._lock:
            self._write(f"a:{key}#{digest}", blob)

    def get_attachment(self, key: str, digest: str) -> bytes | None:
        row = f"a:{key}#{digest}"
        with self._lock:
            blob = self._pending.get(row)
        return blob if blob is not None else self._cache.get(row)

    # ------------------------------------------------------------ files

    def file_entries(self) -> dict[str, tuple[int, int, str, int]]:
        if self._file_entries is None:
            self.refresh()
        return self._file_entries  # type: ignore[return-value]

    def save_file_entries(self, entries: dict[str, tuple[int, int, str, int]]) -> None:
        with self._lock:
            for path, (size, mtime, digest, seen) in entries.items():
                self._write("f:" + path, f"{size} {mtime} {digest} {seen}".encode())

    # ------------------------------------------------------------ writes

    def _write(self, key: str, data: bytes) -> None:
        self._pending[key] = data
        self._pending_bytes += len(data)
        if len(self._pending) >= _FLUSH_ITEMS or self._pending_bytes >= _FLUSH_BYTES:
            self.flush()

    def count(self, name: str, n: int = 1) -> None:
        self._counters[name] += n

    def flush(self, counters_too: bool = False) -> None:
        """Commit buffered rows. Counters ride along with rows, or go alone when asked or when
        they have waited a few seconds: a no-op build then writes nothing at all."""
        with self._lock:
            pending, self._pending, self._pending_bytes = self._pending, {}, 0
            if not pending and not counters_too and time.monotonic() - self._counted < _COUNTER_SECONDS:
                return
            counters, self._counters = dict(self._counters), defaultdict(int)
            self._counted = time.monotonic()
            if not pending and not any(counters.values()):
                return
            with self._cache.transact():
                # values first, traces last (one transaction): a trace never points at a missing value
                written = self._insert_values({k: v for k, v in pending.items() if k[0] == "v"})
                counters["bytes_written"] = counters.get("bytes_written", 0) + written
                self._upsert([(k, v) for k, v in pending.items() if k[0] != "v"])
                for name, n in counters.items():
                    if n:
                        self._cache.incr("m:" + name, n, default=0)

    # Small rows are written in one executemany each, in diskcache's own row format (raw text key,
    # inline blob, no expiry), so that its triggers keep its count and size right; a value large
    # enough to be a file goes through diskcache's add. Called inside cache.transact().
    _COLUMNS = ("INTO Cache(key, raw, store_time, expire_time, access_time, access_count, tag, size,"
                " mode, filename, value) VALUES (?, 1, ?, NULL, ?, 0, NULL, 0, 1, NULL, ?)")

    def _insert_values(self, rows: dict[str, bytes]) -> int:
        if not rows:
            return 0
        small = self._cache.disk_min_file_size
        written = 0
        for key, blob in rows.items():
            if len(blob) >= small and self._cache.add(key, blob):
                written += len(blob)
        keys = [k for k, blob in rows.items() if len(blob) < small]
        existing: set[str] = set()
        for i in range(0, len(keys), 500):
            chunk = keys[i:i + 500]
            existing.update(k for (k,) in self._cache._sql(
                f"SELECT key FROM Cache WHERE raw = 1 AND key IN ({','.join('?' * len(chunk))})", chunk))
        now = time.time()
        new = [(k, now, now, sqlite3.Binary(rows[k])) for k in keys if k not in existing]
        self._cache._con.executemany("INSERT OR IGNORE " + self._COLUMNS, new)
        return written + sum(len(r[3]) for r in new)

    def _upsert(self, rows: list[tuple[str, bytes]]) -> None:
        now = time.time()
        self._cache._con.executemany("INSERT OR REPLACE " + self._COLUMNS,
                                     [(k, now, now, sqlite3.Binary(v)) for k, v in rows])

    # ------------------------------------------------------------ introspection

    def _count_prefix(self, prefix: str) -> int:
        lo, hi = _prefix_range(prefix)
        return self._cache._sql("SELECT COUNT(*) FROM Cache WHERE key >= ? AND key < ? AND raw = 1",
                                (lo, hi)).fetchone()[0]

    def volume(self) -> int:
        """Bytes on disk: the database and the value files (diskcache keeps this cheaply)."""
        return int(self._cache.volume())

    def value_sizes(self) -> list[tuple[str, int, float]]:
        """(hash, size in bytes, stored at) of every stored value."""
        lo, hi = _prefix_range("v:")
        rows = self._cache._sql(
            "SELECT key, CASE WHEN filename IS NULL THEN length(value) ELSE size END, store_time"
            " FROM Cache WHERE key >= ? AND key < ? AND raw = 1", (lo, hi)).fetchall()
        return [(k[2:], size, stored) for k, size, stored in rows]

    def stats(self) -> dict[str, Any]:
        self.flush(counters_too=True)
        counter = lambda name: int(self._cache.get("m:" + name, 0))  # noqa: E731
        return {
            "size_bytes": self.volume(),
            "quota_bytes": self.quota,
            "values": self._count_prefix("v:"),
            "traces": self._count_prefix("t:"),
            "hits": counter("hits"),
            "misses": counter("misses"),
            "evictions": counter("evictions"),
            "bytes_written": counter("bytes_written"),
            "bytes_read": counter("bytes_read"),
        }

    def clear(self) -> None:
        with self._lock:
            self.generation += 1
            self._pending.clear()
            self._cache.clear()
            self._traces = None
            self._file_entries = None
            self.memory_traces.clear()

    def close(self) -> None:
        try:
            self.flush(counters_too=True)
        finally:
            self._cache.close()
