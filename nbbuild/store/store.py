"""The store: values and build information (traces, file stat entries, counters) in one diskcache.

Contract:
- Values are content-addressed: row `v:<hash>` holds the value whose xxh3_128 is <hash>, inline
  when small, else as a value file (valuefile.py) that the row indexes (storing, loading and
  deleting values: values.py, a part of Store). Nothing read from the store is unpickled unless
  its signature (signing.py, this user's key) matches; damaged rows (our key id, a wrong MAC) are
  reported once and dropped.
- Rows another key signed (foreign.py) are another user's: never loaded, counted, deleted or
  rewritten (a value or trace this key would store where one of theirs is stays theirs); one
  warning per process says they are there. Only `gc_foreign()` removes them, and `clear()` and
  eviction leave them. A process that only looks (status, why, plan, stats) writes nothing.
- Each trace is its own immutable row `t:<task key>#<trace ident>`, so processes sharing a store
  never read-modify-write one another's rows. A trace is written after (or with) its value.
- Traces and file stat entries are read in bulk into an in-memory index (index.py); `refresh()`
  picks up rows other processes wrote since.
- Writes are buffered and committed in batches inside `cache.transact()`; `flush()` commits now.
  A write that fails (disk full, store unwritable) loses nothing stored before: the build goes on
  with its values in memory, its traces kept by this process, and one warning; the refused rows
  (up to a batch's bytes) go again with the next commit, refused value files once there is room.
  A lock held past SQLite's wait counts so.
- diskcache's own eviction is off: eviction.py decides, using the bookkeeping kept here in
  diskcache's columns of value rows: access_time (last use), access_count (uses), tag (the
  cost-aware policy's clock when last used). Uses are batched in memory and written with flushes.
- Bounds (eviction.Bounds): `quota`, `min_free`, `policy`, validated when set.
- Hooks given when made: `held()` (values the running build holds), `on_room(store, need)` (before a write).
- Row `a:<task key>#<value hash>` holds what the run that gave that value attached (trace.attach).
  Rows `s:<name>` hold settings, `m:<name>` counters, `x:<hash>` when a value was evicted, `u:<row>`
  a trace or attachment not yet uploaded to the shared tier, `k:<key id>` the index's snapshot and
  `g:<key id>` what this key's last build verified (snapshot.py: `verified`, `keep_verified`).
- With a shared tier (`shared`, sharing.py) this store is its near tier: a task about to run first
  has the shared tier's traces copied in (`refresh_if_changed`), a value missing here is
  downloaded from it (`load`), and what this store records is uploaded in the background.
"""
from __future__ import annotations

import functools
import logging
import os
import shutil
import threading
import time
from collections import defaultdict
from typing import TYPE_CHECKING, AbstractSet, Any, Callable, Iterable

import diskcache

from ..engine import files
from . import foreign, snapshot, valuefile
from .signing import MAC_BYTES, Signer, key_path, user_key
from .index import Index
from .sharing import Sharing
from .table import WRITE_ERRORS, Table
from .inventory import Inventory
from .tiering import Tiering
from .values import Values
from .eviction import Bounds
from ..engine.trace import Trace

if TYPE_CHECKING:
    from .serialisation import Serialized
    from .shared import SharedTier

__all__ = ["Store"]

log = logging.getLogger("nbbuild")
_FLUSH_ITEMS = 2000
_FLUSH_BYTES = 64 << 20
_COUNTER_SECONDS = 5.0


class Store(Values, Tiering, Inventory, Bounds):
    def __init__(self, path: str | os.PathLike, quota: int | None = None, signer: Signer | None = None,
                 shared: SharedTier | None = None, *, held: Callable[[], AbstractSet[str]] = frozenset,
                 on_room: Callable[[Store, int], None] | None = None):
        self.signer = signer or Signer(user_key())
        self.table = Table.open(os.path.abspath(os.fspath(path)))
        self.path = self.table.path
        Bounds.__init__(self, quota)
        self.held = held        # the running build's values: never evicted meanwhile
        self.on_room: Callable[[int], None] | None = functools.partial(on_room, self) if on_room else None
        files.exclude(self.path)
        self._tmp = os.path.join(self.path, "tmp")
        os.makedirs(self._tmp, mode=0o700, exist_ok=True)
        valuefile.sweep_tmp(self._tmp)
        self._lock = threading.RLock()
        self.index = Index(self.table, self.signer, self._reject, self._foreign)
        self._pending: dict[str, bytes] = {}
        self._pending_bytes = 0
        self._counters: dict[str, int] = defaultdict(int)   # not yet written to the store
        self.tally: dict[str, int] = defaultdict(int)       # this process's counts, for per-build figures
        self._touched: dict[str, list[float]] = {}      # value hash -> [last use, uses since flush]
        self._counted = time.monotonic()
        self._rejected: list[str] = []      # rows whose signature did not match, to drop
        self._warned: set[str] = set()
        self.write_error: str | None = None  # why the last write failed, until one succeeds
        self._write_warned = False           # the failed-write warning of this build was given
        self._lost: set[str] = set()         # hashes of inline values a failed batch did not store
        self._refused: dict[str, Serialized] = {}   # value files a full disk refused: values.write_refused
        self.clock = self.setting("clock", 0.0)
        self.sharing: Sharing | None = None if shared is None else Sharing(self, shared)
        self.written = 0                     # bytes written since the last eviction check
        self.generation = 0      # bumped by clear(): what a process remembers of the store is void

    # ------------------------------------------------------------ traces (index.py)

    def _reject(self, key: str) -> None:
        self._rejected.append(key)
        if "unsigned" not in self._warned:
            self._warned.add("unsigned")
            log.warning("nbbuild: the store %s holds damaged entries: not signed with your key (%s), nor by "
                        "another key (edited by hand?). They are never loaded, since loading runs code; they "
                        "are dropped and their tasks run again.", self.path, key_path())

    def _foreign(self, key: str) -> None:
        foreign.kept(self.path, key)

    def owner(self, key: str, value: Any, filename: Any = None) -> str:
        """"mine", "foreign" or "damaged" (foreign.owner)."""
        return foreign.owner(self.signer, key, value, filename)

    def _theirs(self, key: str, value: Any, filename: Any = None) -> bool:
        return foreign.owner(self.signer, key, value, filename) == "foreign"

    def refresh(self) -> None:
        """Load the index, or add what other processes wrote since the last look."""
        with self._lock:
            self.index.refresh()
            if self._rejected:
                rows, self._rejected = self._rejected, []
                self.delete_rows(rows)

    def refresh_if_changed(self) -> bool:
        """refresh() when any process wrote since the last look, and the shared tier's traces once
        per build; whether traces came in."""
        came = False
        with self._lock:
            if self.index.changed():
                before = self.index.watermark
                self.refresh()
                came = self.index.watermark > before
        if self.sharing is not None and self.sharing.sync():
            came = True
        return came

    @property
    def memory_traces(self) -> dict[str, list[Trace]]:
        return self.index.memory

    @property
    def watermark(self) -> int:
        return self.index.watermark

    def traces(self, key: str, persist: bool = True) -> list[Trace]:
        if not persist:
            return self.index.memory.get(key, [])
        return self.traces_index().get(key, [])

    def traces_index(self) -> dict[str, list[Trace]]:
        """The live index of persisted traces, key -> traces newest first (read-only to callers)."""
        if self.index.traces is None:
            self.refresh()
        assert self.index.traces is not None        # refresh() loaded it
        return self.index.traces

    def any_trace(self, key: str) -> Trace | None:
        lst = self.traces(key) or self.index.memory.get(key)
        return lst[0] if lst else None

    def record(self, trace: Trace, persist: bool = True) -> None:
        with self._lock:
            if not persist:
                self.index.remember(trace)
                return
            self.index.add(trace)
            row = f"t:{trace.key}#{trace.ident}"
            self.index.own.add(row)
            self._write(row, self.signer.seal(row, trace.encode()))
        if self.sharing is not None:
            self.sharing.queue_trace(trace)

    def forget_traces(self, rows: Iterable[str]) -> None:
        with self._lock:
            for row in rows:
                self.index.forget(row)

    # ------------------------------------------------------------ attachments

    def put_attachment(self, key: str, digest: str, blob: bytes) -> None:
        """What the run of task `key` that gave value `digest` attached (rewritten by a later run
        giving the same value: the row says which run's attachment, not what the value is)."""
        with self._lock:
            row = f"a:{key}#{digest}"
            self._write(row, self.signer.seal(row, blob))
        if self.sharing is not None:
            self.sharing.queue(row)

    def get_attachment(self, key: str, digest: str) -> bytes | None:
        row = f"a:{key}#{digest}"
        with self._lock:
            sealed = self._pending.get(row)
        if sealed is None:
            found = self.table.get(row)
            if found is not None and type(found[0]) is bytes and self._theirs(row, *found):
                row = foreign.alt(row, self.signer.kid)      # theirs: this key's own is beside it
                found = self.table.get(row)
            sealed = found[0] if found is not None and type(found[0]) is bytes else None
            if sealed is None:
                return None
        data = self.signer.open(row, sealed)
        if data is None:
            if self.signer.foreign(sealed):
                self._foreign(row)
            else:
                self._reject(row)
            return None
        return data.tobytes()

    # ------------------------------------------------------------ files

    def file_entries(self) -> dict[str, tuple[int, int, str, int]]:
        if self.index.file_entries is None:
            self.refresh()
        assert self.index.file_entries is not None      # refresh() loaded it
        return self.index.file_entries

    def save_file_entries(self, entries: dict[str, tuple[int, int, str, int]]) -> None:
        with self._lock:
            for path, (size, mtime, digest, seen) in entries.items():
                row = "f:" + path
                self._write(row, self.signer.seal(row, f"{size} {mtime} {digest} {seen}".encode()))

    # ------------------------------------------------------------ settings and counters

    def setting(self, name: str, default: Any = None) -> Any:
        return self.table.number("s:" + name, default)

    def set_setting(self, name: str, value: int | float | str | None) -> None:
        try:
            with self.table.transact():
                if value is None:
                    self.table.delete(["s:" + name])
                else:
                    self.table.upsert([("s:" + name, value)])
        except WRITE_ERRORS as e:
            self._write_failed(e)

    def count(self, name: str, n: int = 1) -> None:
        self._counters[name] += n
        self.tally[name] += n

    def counter(self, name: str) -> int:
        value = self.table.number("m:" + name, 0)
        return int(value) if isinstance(value, (int, float)) else 0

    # ------------------------------------------------------------ writes

    def _write(self, key: str, data: bytes) -> None:
        self._pending[key] = data
        self._pending_bytes += len(data)
        if len(self._pending) >= _FLUSH_ITEMS or self._pending_bytes >= _FLUSH_BYTES:
            self.flush()

    def flush(self, counters_too: bool = False) -> None:
        """Commit buffered rows. Counters and uses ride along with rows, or go alone when asked or
        when they have waited a few seconds: a no-op build then writes nothing at all."""
        if self._refused:
            self.write_refused()
        with self._lock:
            pending, self._pending, self._pending_bytes = self._pending, {}, 0
            if not pending and not counters_too and time.monotonic() - self._counted < _COUNTER_SECONDS:
                return
            counters, self._counters = dict(self._counters), defaultdict(int)
            touched, self._touched = self._touched, {}
            self._counted = time.monotonic()
            if not pending and not any(counters.values()) and not touched:
                return
            try:
                with self.table.transact():
                    # values first, traces last (one transaction): a trace never points at a missing value
                    # another key's row stays theirs: this key writes its own beside it (foreign.py)
                    have = self.table.stored(list(pending) + [valuefile.row_key(d) for d in touched])
                    theirs = {k for k, row in have.items() if self._theirs(k, *row)}
                    kid = self.signer.kid
                    written = self.table.insert_blobs([(k, v) for k, v in pending.items()
                                                       if k[0] == "v" and k not in theirs], self.clock, self._theirs)
                    counters["bytes_written"] = counters.get("bytes_written", 0) + written
                    self.tally["bytes_written"] += written
                    self.table.upsert([(foreign.cosign(k[2:], kid), v[:MAC_BYTES]) if k[0] == "v" else
                                       (foreign.alt(k, kid), self.signer.seal(foreign.alt(k, kid), v[MAC_BYTES:]))
                                       for k, v in pending.items() if k in theirs])
                    self.table.upsert([(k, v) for k, v in pending.items() if k[0] != "v" and k not in theirs])
                    self.table.used({foreign.cosign(d, kid) if valuefile.row_key(d) in theirs else valuefile.row_key(d):
                                     use for d, use in touched.items()}, self.clock)
                    self.table.add_counts({"m:" + name: n for name, n in counters.items()})
            except WRITE_ERRORS as e:
                # nothing of this batch is stored; its traces stay known to this process, and it
                # is committed again with the next one (a lock let go, space freed): what this
                # process built then reaches the store without running again
                self._lost.update(key[2:] for key in pending if key[0] == "v")
                for key, data in pending.items():
                    if key[0] == "t":
                        self.index.remember(Trace.decode(data[MAC_BYTES:]))
                        self.index.forget(key)
                size = sum(map(len, pending.values()))
                if size + self._pending_bytes <= _FLUSH_BYTES:
                    self._pending, self._pending_bytes = {**pending, **self._pending}, self._pending_bytes + size
                self._write_failed(e)
                return
            self._lost.difference_update(key[2:] for key in pending if key[0] == "v")
            self.write_error = None

    def end_build(self) -> None:
        """A build is over: commit what it wrote, then upload it to the shared tier in the
        background (not during the build: uploads would take the cores and bandwidth it uses)."""
        self.flush()
        with self._lock:
            self.index.keep_snapshot()
        if self.sharing is not None:
            self.sharing.kick()

    def verified(self) -> bytes | None:
        """What the last build of this key verified, as it kept it (snapshot.py), or None."""
        return snapshot.read_verified(self.table, self.signer)

    def keep_verified(self, data: bytes) -> None:
        with self._lock:
            snapshot.write_verified(self.table, self.signer, data)

    def begin_build(self) -> None:
        """A build starts: its first failed write warns (once), and what it fails to store is its own."""
        with self._lock:
            self._write_warned = False
            self._lost.clear()
        if self.sharing is not None:
            self.sharing.begin_build()

    def take_lost(self) -> set[str]:
        """Hashes of inline values that failed batches left unstored since the build began."""
        with self._lock:
            lost, self._lost = self._lost, set()
        return lost

    def _write_failed(self, error: BaseException) -> str:
        reason = getattr(error, "strerror", None) or str(error)
        locked = isinstance(error, diskcache.Timeout) or "locked" in reason
        if locked:
            reason = "its index was locked by another process for too long"
        if not self._write_warned:
            self._write_warned = True
            log.warning("nbbuild: the store at %s could not be written (%s); values of this build stay in memory "
                        "and nothing stored before is lost. %s and build again.", self.path, reason,
                        "Let the other kernel or nbbuild command on this store finish" if locked
                        else "Free disk space (or lower the quota)")
        self.write_error = f"the store could not be written ({reason})"
        self.count("write_failures", 1)
        return self.write_error

    def delete_rows(self, keys: list[str]) -> int:
        """Delete rows, and the value files they name after the commit (a crash in between leaves
        a stray file for the sweep, never a row without its file); returns the file bytes freed."""
        try:
            with self.table.transact():
                names = self.table.delete(keys)
        except WRITE_ERRORS as e:
            self._write_failed(e)
            return 0
        return self._remove_files(names)

    def _remove_files(self, names: list[str]) -> int:
        """Remove the value files of deleted rows (table.remove_files); returns the bytes freed."""
        try:
            return self.table.remove_files(names)
        except WRITE_ERRORS as e:
            self._write_failed(e)
            return 0

    def sweep_files(self, older_than: float = 3600.0) -> int:
        """Remove value files no row names, and temporary files of writers that died."""
        try:
            with self.table.transact():    # as _remove_files: never a file that is being stored again
                swept = valuefile.sweep(self.path, self.table.filenames(), older_than)
        except WRITE_ERRORS as e:
            self._write_failed(e)
            swept = 0
        return swept + valuefile.sweep_tmp(self._tmp)

    def clear(self) -> None:
        with self._lock:
            self.generation += 1
            self._pending.clear()
            self._pending_bytes = 0
            self._refused.clear()
            self._touched.clear()
            kept = [k for k, _ in foreign.rows(self.table, self.signer)]
            kept += self._cosigned_by_others()      # their cosignature's MAC is over this row's bytes
            names: list[str] = []
            try:
                with self.table.transact():   # settings (the quota) and other keys' rows stay
                    names = self.table.clear(kept)
            except WRITE_ERRORS as e:
                self._write_failed(e)
            if kept:
                self._remove_files(names)
            else:
                shutil.rmtree(os.path.join(self.path, "v"), ignore_errors=True)
            self.index.clear()

    def close(self, upload_seconds: float = 0.0) -> None:
        try:
            self.flush(counters_too=True)
            if self.sharing is not None:
                left = self.sharing.close(upload_seconds)
                if left and not self.sharing.down:
                    log.warning("nbbuild: %d traces were not uploaded to the shared store %s yet; they are "
                                "uploaded by the next session that uses this store", left, self.sharing.tier.url)
        finally:
            self.table.close()
