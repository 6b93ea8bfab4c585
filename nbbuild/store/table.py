"""The table: nbbuild's rows in diskcache's Cache table, read and written without unpickling.

diskcache unpickles a row whose mode says "pickle" when it is read through its API (`get`,
`incr`...). A store directory may hold rows nobody here wrote, so nbbuild reads and writes rows
with SQL of its own, in diskcache's row format (its triggers keep count and size right, and its
`volume()` and `transact()` still work), and accepts only raw values: bytes, numbers, text.

Contract:
- `Table.open(path)` makes the directory (0700, tightened when it is the user's own and wider)
  and opens diskcache there with its own eviction off. A damaged index (not a database) is
  moved aside with a warning and an empty one is made; a directory that cannot be used at all
  (unwritable, on a full disk) gives a temporary table, with a warning, deleted on close.
- Rows are (key, value) with `raw = 1` text keys; values of rows indexing a value file are NULL
  with `filename` set. Prefix scans are single selects; batches are written with `executemany`
  inside `transact()` by the caller.
- Value rows keep diskcache's bookkeeping columns for eviction: store_time, access_time (last
  use), access_count (uses), tag (the cost-aware policy's clock at last use), size (file bytes).
"""
from __future__ import annotations

import logging
import os
import re
import shutil
import sqlite3
import tempfile
import time
from typing import Any, Iterable

import diskcache

__all__ = ["Table", "WRITE_ERRORS", "FILE_NAME", "prefix_range"]

log = logging.getLogger("nbbuild")
# diskcache.Timeout: another process held the index's write lock past SQLite's wait (60 s): the
# write is lost as on a full disk (logged; the value stays in memory), not the build
WRITE_ERRORS = (OSError, sqlite3.Error, diskcache.Timeout)
FILE_NAME = re.compile(r"^v/[0-9a-f]{2}/[0-9a-f]{32}\.nbv$")   # the only files a row may name
_MODE_RAW, _MODE_BINARY = 1, 2
_VALUE = "CASE WHEN mode = 4 THEN NULL ELSE value END"   # a pickle row (diskcache's, never ours) reads as NULL
_COLUMNS = ("INTO Cache(key, raw, store_time, expire_time, access_time, access_count, tag, size,"
            " mode, filename, value) VALUES (?, 1, ?, NULL, ?, ?, ?, ?, ?, ?, ?)")


def prefix_range(prefix: str) -> tuple[str, str]:
    return prefix, prefix[:-1] + chr(ord(prefix[-1]) + 1)


def _cache(path: str) -> diskcache.Cache:
    os.makedirs(path, mode=0o700, exist_ok=True)
    info = os.stat(path)
    if info.st_uid == os.getuid() and info.st_mode & 0o077:
        # values are pickles of the user's data: keep them private, taking from group and others
        # only (a store its owner made read-only stays read-only)
        os.chmod(path, info.st_mode & 0o700)
    cache = diskcache.Cache.__new__(diskcache.Cache)
    try:
        cache.__init__(path, eviction_policy="none", size_limit=2 ** 62, cull_limit=0, statistics=False)
    except BaseException:
        # a store that cannot be used is let go: the connection diskcache opened before failing
        # would otherwise keep the database (and its -wal, -shm) open until the cyclic collector runs
        try:
            cache.close()
        except Exception:
            pass
        raise
    return cache


class Table:
    def __init__(self, cache: diskcache.Cache, path: str, temporary: bool = False):
        self.cache, self.path, self.temporary = cache, path, temporary

    @property
    def con(self) -> Any:
        return self.cache._con     # diskcache keeps one SQLite connection per thread

    @classmethod
    def open(cls, path: str) -> Table:
        try:
            return cls(_cache(path), path)
        except sqlite3.DatabaseError as e:
            if "not a database" not in str(e) and "malformed" not in str(e):
                return cls._fallback(path, e)
            # the index is damaged beyond use: keep it aside and start an empty one
            aside = os.path.join(path, f"cache.db.damaged-{int(time.time())}")
            os.replace(os.path.join(path, "cache.db"), aside)
            for extra in ("-wal", "-shm"):
                try:
                    os.unlink(os.path.join(path, "cache.db" + extra))
                except OSError:
                    pass
            log.warning("nbbuild: the store index in %s was damaged (%s); it was moved to %s and an empty "
                        "index is used: tasks run again", path, e, aside)
            try:
                return cls(_cache(path), path)
            except WRITE_ERRORS as e2:
                return cls._fallback(path, e2)
        except WRITE_ERRORS as e:
            return cls._fallback(path, e)

    @classmethod
    def _fallback(cls, path: str, error: BaseException) -> Table:
        reason = getattr(error, "strerror", None) or str(error)
        try:
            if shutil.disk_usage(os.path.dirname(path.rstrip("/")) or "/").free < 1 << 20:
                reason += "; its disk is full"
        except OSError:
            pass
        for base in ("/dev/shm", None):
            try:
                tmp = tempfile.mkdtemp(prefix="nbbuild-", dir=base if base and os.path.isdir(base) else None)
                cache = _cache(tmp)
            except WRITE_ERRORS:
                continue
            log.warning("nbbuild: the store at %s cannot be used (%s); this session keeps its values in a "
                        "temporary store that is deleted when it ends. Give a writable directory "
                        "(Build(path) or NBBUILD_DIR).", path, reason)
            return cls(cache, tmp, temporary=True)
        raise OSError(f"the store at {path} cannot be used ({reason}) and no temporary store could be made")

    # ------------------------------------------------------------ reads

    def sql(self, query: str, args: Iterable[Any] = ()) -> list[tuple]:
        return self.cache._sql(query, tuple(args)).fetchall()

    def scan(self, prefix: str, after: int = 0) -> list[tuple[str, Any, int, Any]]:
        """(key, value, rowid, filename) of rows under `prefix` with a rowid above `after`."""
        lo, hi = prefix_range(prefix)
        # what is new since `after` is found by rowid (few rows), not through the key index (all)
        where = "rowid > ? AND +key >= ? AND +key < ?" if after else "rowid > ? AND key >= ? AND key < ?"
        return self.sql(f"SELECT key, {_VALUE}, rowid, filename FROM Cache WHERE {where} AND raw = 1", (after, lo, hi))

    def last_rowid(self) -> int:
        return self.sql("SELECT MAX(rowid) FROM Cache")[0][0] or 0

    def keys(self, prefix: str) -> list[tuple[str, int]]:
        lo, hi = prefix_range(prefix)
        return self.sql("SELECT key, rowid FROM Cache WHERE key >= ? AND key < ? AND raw = 1", (lo, hi))

    def marks(self) -> list[tuple[str, float]]:
        """(value hash, when it was evicted) of evicted values."""
        return [(k[2:], float(v)) for k, v, _, _ in self.scan("x:") if isinstance(v, (int, float))]

    def get(self, key: str) -> tuple[Any, Any] | None:
        """(value, filename) of a row, or None."""
        rows = self.sql(f"SELECT {_VALUE}, filename FROM Cache WHERE key = ? AND raw = 1", (key,))
        return rows[0] if rows else None

    def number(self, key: str, default: Any = None) -> Any:
        found = self.get(key)
        return found[0] if found is not None and isinstance(found[0], (int, float, str)) else default

    def count(self, prefix: str, files_only: bool = False) -> int:
        lo, hi = prefix_range(prefix)
        extra = " AND filename IS NOT NULL" if files_only else ""
        return self.sql(f"SELECT COUNT(*) FROM Cache WHERE key >= ? AND key < ? AND raw = 1{extra}", (lo, hi))[0][0]

    def size_of(self, key: str) -> int | None:
        rows = self.sql("SELECT CASE WHEN filename IS NULL THEN length(value) ELSE size END FROM Cache"
                        " WHERE key = ? AND raw = 1", (key,))
        return int(rows[0][0] or 0) if rows else None

    def existing(self, keys: list[str]) -> set[str]:
        found: set[str] = set()
        for i in range(0, len(keys), 500):
            chunk = keys[i:i + 500]
            found.update(k for (k,) in self.sql(
                f"SELECT key FROM Cache WHERE raw = 1 AND key IN ({','.join('?' * len(chunk))})", chunk))
        return found

    def value_rows(self, kid: bytes | None = None,
                   others: Any = None) -> list[tuple[str, int, float, float, int, float]]:
        """Every value row; with `kid`, those whose MAC ends with that key id, and those without for
        which `others(key, value, filename)` is true."""
        lo, hi = prefix_range("v:")
        rows = self.sql("SELECT key, CASE WHEN filename IS NULL THEN length(value) ELSE size END, store_time,"
                        " access_time, access_count, tag, substr(value, 13, 4), filename FROM Cache"
                        " WHERE key >= ? AND key < ? AND raw = 1", (lo, hi))
        if kid is not None:
            rows = [r for r in rows if r[6] == kid or (r[6] is None and r[7] is not None)
                    or others(r[0], *(self.get(r[0]) or (None, None)))]
        return [(k[2:], int(size or 0), float(stored or 0), float(used or stored or 0), int(uses or 0),
                 float(tag) if isinstance(tag, (int, float)) else 0.0)
                for k, size, stored, used, uses, tag, _, _ in rows]

    def filenames(self) -> set[str]:
        return {f for (f,) in self.sql("SELECT filename FROM Cache WHERE key >= 'v:' AND key < 'w:' AND raw = 1"
                                       " AND filename IS NOT NULL")}

    def volume(self) -> int:
        return int(self.cache.volume())

    # ------------------------------------------------------------ writes (inside transact())

    def transact(self) -> Any:
        return self.cache.transact()

    def stored(self, keys: list[str]) -> dict[str, tuple[Any, Any]]:
        """key -> (value, filename) of the rows there are of `keys`."""
        found: dict[str, tuple[Any, Any]] = {}
        for i in range(0, len(keys), 500):
            chunk = keys[i:i + 500]
            found.update((k, (v, f)) for k, v, f in self.sql(
                f"SELECT key, {_VALUE}, filename FROM Cache WHERE raw = 1 AND key IN ({','.join('?' * len(chunk))})",
                chunk))
        return found

    def insert_blobs(self, rows: list[tuple[str, bytes]], clock: float,
                     keep: Any = lambda key, value, filename: False) -> int:
        """New value rows; returns the bytes that went in. A row already there is left alone when
        it holds these very bytes (a value row is content-addressed and its seal deterministic),
        or when `keep(key, value, filename)` says so (another key's row), and replaced otherwise:
        it is damaged."""
        have = self.stored([k for k, _ in rows])
        now = time.time()
        new = [(k, now, now, 1, clock, 0, _MODE_RAW, None, sqlite3.Binary(v)) for k, v in rows
               if have.get(k) != (v, None) and not (k in have and keep(k, *have[k]))]
        stale = [r[0] for r in new if r[0] in have]
        if stale:   # DELETE, then INSERT: diskcache's count and size triggers stay right (REPLACE skips them)
            self.delete(stale)   # a file such a row named is left to sweep_files, which knows the store's own
        self.con.executemany("INSERT OR IGNORE " + _COLUMNS, new)
        return sum(len(r[-1]) for r in new)

    def insert_file(self, key: str, filename: str, size: int, clock: float, mac: bytes | None = None) -> None:
        """A value file's row; its value column keeps the file's MAC (whose key it is, foreign.py)."""
        now = time.time()
        self.con.execute("INSERT OR IGNORE " + _COLUMNS, (key, now, now, 1, clock, size, _MODE_BINARY, filename,
                                                          None if mac is None else sqlite3.Binary(mac)))

    def upsert(self, rows: list[tuple[str, Any]]) -> None:
        now = time.time()
        self.con.executemany("INSERT OR REPLACE " + _COLUMNS, [
            (k, now, now, 0, None, 0, _MODE_RAW, None, sqlite3.Binary(v) if isinstance(v, bytes) else v)
            for k, v in rows])

    def add_counts(self, counts: dict[str, int]) -> None:
        self.con.executemany(
            "INSERT INTO Cache(key, raw, store_time, access_time, access_count, size, mode, value)"
            " VALUES (?, 1, 0, 0, 0, 0, 1, ?) ON CONFLICT(key, raw) DO UPDATE SET"
            " value = CASE WHEN typeof(value) = 'integer' THEN value ELSE 0 END + excluded.value",
            [(k, n) for k, n in counts.items() if n])

    def used(self, uses: dict[str, list[float]], clock: float) -> None:
        self.con.executemany("UPDATE Cache SET access_time = ?, access_count = access_count + ?, tag = ?"
                             " WHERE key = ? AND raw = 1", [(t, n, clock, k) for k, (t, n) in uses.items()])

    def _top(self) -> int:
        return self.sql("SELECT MAX(rowid) FROM Cache")[0][0] or 0

    def _keep_top(self, top: int) -> None:
        """SQLite gives a new row the highest rowid + 1: once the rows at the top are deleted, rows
        written later would take rowids other processes have seen already, and their watermarks
        (Store.refresh, refresh_if_changed, eviction.prune) would pass over them. A marker row,
        `s:rowid`, keeps the highest rowid in place."""
        if top and self._top() < top:
            self.con.execute("DELETE FROM Cache WHERE key = 's:rowid' AND raw = 1")
            self.con.execute("INSERT INTO Cache(rowid, key, raw, store_time, expire_time, access_time, access_count,"
                             " tag, size, mode, filename, value) VALUES (?, 's:rowid', 1, 0, NULL, 0, 0, NULL, 0, ?,"
                             " NULL, ?)", (top, _MODE_RAW, top))

    def delete(self, keys: list[str]) -> list[str]:
        """Delete rows; returns the value files they named, for the caller to remove after commit."""
        top = self._top()
        files: list[str] = []
        for i in range(0, len(keys), 500):
            chunk = keys[i:i + 500]
            marks = ",".join("?" * len(chunk))
            files += [f for (f,) in self.sql(
                f"SELECT filename FROM Cache WHERE raw = 1 AND filename IS NOT NULL AND key IN ({marks})", chunk)]
            self.con.execute(f"DELETE FROM Cache WHERE raw = 1 AND key IN ({marks})", chunk)
        self._keep_top(top)
        return files

    def remove_files(self, names: list[str]) -> int:
        """Remove the value files of deleted rows, under the write lock and only those no row names
        again: another process may have stored the same value since (file and row together, under
        that lock). Only files inside the store (FILE_NAME) are touched. Returns the bytes freed."""
        names = [str(n) for n in names if FILE_NAME.match(str(n))]
        if not names:
            return 0
        keys = {name: "v:" + os.path.basename(name)[:-len(".nbv")] for name in names}
        freed = 0
        with self.transact():
            again = self.existing(list(keys.values()))
            for name in names:
                if keys[name] in again:
                    continue
                try:
                    path = os.path.join(self.path, name)
                    freed += os.path.getsize(path)
                    os.unlink(path)
                except OSError:
                    pass
        return freed

    def clear(self, keep: Iterable[str] = ()) -> list[str]:
        """Every row but the settings (`s:`) and those in `keep`; returns the value files they named."""
        keep = set(keep)
        if keep:
            return self.delete([k for (k,) in self.sql("SELECT key FROM Cache WHERE raw = 1 AND NOT"
                                                       " (key >= 's:' AND key < 't:')") if k not in keep])
        top = self._top()
        self.con.execute("DELETE FROM Cache WHERE NOT (raw = 1 AND key >= 's:' AND key < 't:')")
        self._keep_top(top)
        return []

    def close(self) -> None:
        self.cache.close()
        if self.temporary:
            shutil.rmtree(self.path, ignore_errors=True)
