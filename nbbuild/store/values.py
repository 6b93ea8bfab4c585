"""Values in the store: stored once by hash, loaded only when whole and signed, deleted with
their files.

Contract: `Values` is a part of Store (store.py), mixed in: it uses the store's table, signer,
pending writes, lock and counters.
- `put_value(ser)` stores a value unless it is there already (row `v:<hash>`, inline when small,
  else a value file written at disk speed: valuefile.py); None when stored, else why not (larger
  than the quota, the disk full...): the caller keeps it in memory. A value row is never
  overwritten; another key's value is cosigned, not replaced (foreign.py). Value files a full
  disk refused (up to 64 MB) are written at a later flush, once it has room, if the value is
  still as hashed (`write_refused`).
- `load(digest)` -> (found, value, why not). Every load checks the value against its hash and
  signature: a missing, truncated or altered value is a miss that says why, and its row is
  removed so that the task's next run can store it again; another key's value is a plain miss.
  One missing here is asked of the shared tier, when the store has one (sharing.py).
- `has_value`, `value_size`, `touch` (uses, for eviction), `delete_values` (noting when they were
  evicted: traces outlive their values), `delete_value`.
"""
from __future__ import annotations

import logging
import os
import time
from typing import Any, Iterable

from ..report.formatting import size_text
from . import foreign, serialisation, valuefile
from .signing import MAC_BYTES
from .table import WRITE_ERRORS
from .parts import StoreParts

__all__ = ["Values", "FILE_BYTES"]

log = logging.getLogger("nbbuild")
FILE_BYTES = 256 << 10      # values at least this big are value files
_REFUSED_BYTES = 64 << 20   # value files a full disk refused, kept to write again: at most this much


class Values(StoreParts):
    def put_value(self, ser: serialisation.Serialized) -> str | None:
        """Store a value unless it is there already. Returns None when it is stored, else why not
        (it is larger than the quota, the disk is full...): the caller keeps it in memory."""
        size = ser.nbytes
        if self.quota is not None and size > self.quota:
            return f"{size_text(size)} is more than the store's quota of {size_text(self.quota)}"
        self.written += size
        if self.on_room is not None:
            try:
                self.on_room(size)
            except Exception:  # eviction is housekeeping: the value is still worth storing
                log.warning("nbbuild: eviction failed", exc_info=True)
        if size >= FILE_BYTES:
            return self._put_file(ser)
        key = valuefile.row_key(ser.digest)
        with self._lock:
            if key not in self._pending:
                self._write(key, self.signer.seal(key, ser.blob(), ser.signed))
        return None

    def _put_file(self, ser: serialisation.Serialized, again: bool = False) -> str | None:
        if ser.known and self.has_value(ser.digest):
            return None

        def place(tmp: str, path: str) -> None:
            # the file and its row go in together under the store's write lock, which a process
            # removing value files holds too (_remove_files): it cannot take the file from under
            # the new row. Killed in between: a stray file for the sweep, never a row without file.
            with self.table.transact():
                key = valuefile.row_key(ser.digest)
                row = self.table.get(key)
                with open(tmp, "rb") as f:
                    mac = f.read(MAC_BYTES)
                if row is not None and self._theirs(key, *row) and os.path.exists(path):
                    os.unlink(tmp)      # another key's value file stays theirs: this key cosigns it
                    self.table.upsert([(foreign.cosign(ser.digest, self.signer.kid), mac)])
                    return
                os.replace(tmp, path)
                self.table.insert_file(key, valuefile.file_name(ser.digest), ser.nbytes, self.clock, mac)

        try:
            self.flush()
            valuefile.write(ser, self.signer, self._tmp,
                            lambda d: os.path.join(self.path, valuefile.file_name(d)), place)
        except WRITE_ERRORS as e:
            # not a file read as it is stored (outputs.py), whose caller closes it
            if not again and all(type(r) is memoryview for r in ser.raws):
                digest = ser.digest     # hashed now when the write failed before it was
                with self._lock:        # written again once the disk has room (write_refused)
                    if sum(r.nbytes for r in self._refused.values()) + ser.nbytes <= _REFUSED_BYTES:
                        self._refused[digest] = ser
            return self._write_failed(e)
        self.write_error = None
        self.count("bytes_written", ser.nbytes)
        return None

    def write_refused(self) -> None:
        """Write the value files a full disk refused, those it now has room for (the next flush
        does, after a build or when the store closes), as refused rows go again with the next
        commit: what was built then reaches the store without running again. Each is hashed
        again first, as a later cell may have changed the value in place since; one refused again
        is dropped."""
        with self._lock:
            refused, self._refused = self._refused, {}
        for digest, ser in refused.items():
            if self.has_value(digest):
                continue
            if self.free_space() - self.min_free < 2 * ser.nbytes:
                with self._lock:
                    self._refused[digest] = ser
                continue
            now = serialisation.Serialized(ser.meta, ser.raws)
            if now.digest == digest:
                self._put_file(now, again=True)

    def load(self, digest: str, by_value: set[str] | None = None) -> tuple[bool, Any, str]:
        """(found, value, why not). A value that is missing is (False, None, ""); one that is
        damaged, foreign or cannot be unpickled says why, and a damaged one is dropped. With
        `by_value`, the digest goes into it when the value holds classes pickled by value
        (pickling.loads_noting)."""
        key = valuefile.row_key(digest)
        with self._lock:
            sealed: Any = self._pending.get(key)
        filename, mac = None, None
        if sealed is None:
            row = self.table.get(key)
            if row is None:
                if self.sharing is not None:        # the near tier lacks it: the shared tier may have it
                    found, got = self.sharing.load(digest)
                    if found:
                        return self._unpickled(got[0], got[1], digest, by_value)
                return False, None, ""
            sealed, filename = row
            if self._theirs(key, sealed, filename):     # this key's cosignature, if it has one
                cosigned = self.table.get(foreign.cosign(digest, self.signer.kid))
                mac = cosigned[0] if cosigned is not None and type(cosigned[0]) is bytes else None
        meta: bytes | memoryview
        try:
            if filename is not None:
                if not valuefile.FILE_NAME.match(str(filename)):
                    raise valuefile.Damaged("its row names a file outside the store")
                meta, buffers = valuefile.read(os.path.join(self.path, filename), digest, self.signer, mac)
                nbytes = sum(len(b) for b in buffers) + len(meta)
            else:
                meta, buffers = valuefile.open_inline(key, sealed if mac is None else mac + sealed[MAC_BYTES:],
                                                      digest, self.signer)
                nbytes = len(sealed)
        except valuefile.Damaged as e:
            if e.foreign:          # another key's value: a miss here, kept for its owner
                self._foreign(key)
                return False, None, ""
            if mac is not None:    # a damaged cosignature goes; their value stays
                self.count("damaged", 1)
                self.delete_rows([foreign.cosign(digest, self.signer.kid)])
                return False, None, str(e)
            if not self._drop_damaged(key, str(e), filename):
                return False, None, ""     # evicted (or stored again) by another process meanwhile
            return False, None, str(e)
        self.count("bytes_read", nbytes)
        self.touch([digest])
        return self._unpickled(meta, buffers, digest, by_value)

    @staticmethod
    def _unpickled(meta: Any, buffers: list[Any], digest: str = "",
                   by_value: set[str] | None = None) -> tuple[bool, Any, str]:
        try:
            value, made = serialisation.unpickle_noting(meta, buffers)
        except Exception as e:  # unpickling runs code (a class that moved, a package missing)
            return False, None, f"it cannot be unpickled here ({type(e).__name__}: {e})"
        if made and by_value is not None:
            by_value.add(digest)
        return True, value, ""

    def _drop_damaged(self, key: str, why: str, filename: Any = None) -> bool:
        """Drop a damaged value's row; False when it was not damaged after all. A value file is
        looked at again under the write lock, which processes storing or removing value files
        hold: when its row is gone, names another file, or its missing file is back, another
        process evicted or stored the value meanwhile, and nothing is dropped."""
        if filename is not None:
            try:
                with self.table.transact():
                    row = self.table.get(key)
                    if row is None or row[1] != filename or (
                            "missing" in why and os.path.exists(os.path.join(self.path, filename))):
                        return False
                    names = self.table.delete([key])
            except WRITE_ERRORS as e:
                self._write_failed(e)
                return True
            self.count("damaged", 1)    # the caller warns, naming the task
            self._remove_files(names)
            return True
        self.count("damaged", 1)    # the caller warns, naming the task; the row goes
        self.delete_rows([key])
        return True

    def value_size(self, digest: str) -> int | None:
        """Stored bytes of a value, or None when it is not stored."""
        key = valuefile.row_key(digest)
        with self._lock:
            blob = self._pending.get(key)
        return len(blob) if blob is not None else self.table.size_of(key)

    def has_value(self, digest: str) -> bool:
        """Whether this key's value is stored (another key's is not: it cannot be loaded here)."""
        key = valuefile.row_key(digest)
        if key in self._pending:
            return True
        row = self.table.get(key)
        if row is None:
            return self.sharing is not None and self.sharing.has_value(digest)
        return not self._theirs(key, *row) or self.table.get(foreign.cosign(digest, self.signer.kid)) is not None

    def touch(self, digests: Iterable[str]) -> None:
        """Note that values were used now (recency and frequency, for eviction)."""
        now = time.time()
        with self._lock:
            for d in digests:
                seen = self._touched.get(d)
                if seen is None:
                    self._touched[d] = [now, 1]
                else:
                    seen[0] = now
                    seen[1] += 1

    def delete_values(self, digests: list[str], evicted: bool = True) -> int:
        """Remove values in one transaction; with `evicted`, note when (traces outlive their
        values, and are pruned later). Returns the bytes of value files freed."""
        with self._lock:
            for d in digests:
                self._pending.pop(valuefile.row_key(d), None)
        keys = [valuefile.row_key(d) for d in digests]
        have = self.table.stored(keys)      # another key's value stays: this key's cosignature goes
        freed = self.delete_rows([foreign.cosign(k[2:], self.signer.kid) if k in have and self._theirs(k, *have[k])
                                  else k for k in keys])
        if evicted and digests:
            now = time.time()
            try:
                with self.table.transact():
                    self.table.upsert([("x:" + d, now) for d in digests])
            except WRITE_ERRORS as e:
                self._write_failed(e)
        return freed

    def delete_value(self, digest: str) -> bool:
        had = self.has_value(digest)
        self.delete_values([digest], evicted=False)
        return had
