"""Tiering: the local store's side of a shared tier (shared.py, sharing.py).

Contract: `Tiering` is a part of Store (store.py), mixed in: it uses the store's table, signer,
pending writes and lock.
- `share(tier)` puts a shared tier behind the store (None: none).
- Down: `adopt(traces, attachments)` keeps what the shared tier's packs hold under this user's
  key (never queued for upload again); `adopt_value(digest, tmp)` places a downloaded value file,
  checked under the team key, signed again under this key; `adopt_inline(digest, sealed)` keeps
  a small value a pack carried.
- Up: `value_source(digest)` is a value as stored here (a file's path, or a row), `row_data(row)`
  a trace or attachment checked under this key; `mark_upload`, `unmark_uploads` and
  `marked_uploads` keep the `u:` rows that say what is not uploaded yet.
"""
from __future__ import annotations

import logging
import os
from typing import TYPE_CHECKING

from ..engine.trace import Trace
from ..report.formatting import size_text
from . import serialisation, valuefile
from .signing import MAC_BYTES
from .table import WRITE_ERRORS

if TYPE_CHECKING:
    from .shared import SharedTier
from .parts import StoreParts

__all__ = ["Tiering"]

log = logging.getLogger("nbbuild")

# An explanation asked at every cell run (the JupyterLab badges) must not list the tier each time
_LOOK_SECONDS = 60.0


class Tiering(StoreParts):
    def share(self, tier: SharedTier | None) -> None:
        """Use this shared tier from now on (None: none); what the one before had queued stays
        marked here and goes to whichever tier is used next."""
        if self.sharing is not None:
            self.sharing.close(0.0)
        from .sharing import Sharing
        self.sharing = None if tier is None else Sharing(self, tier)  # type: ignore[arg-type]

    def look_in_shared(self) -> bool:
        """Between builds (explain: status, why, a dry run), copy in the shared tier's traces
        when it was last read more than a minute ago; whether any came. A build reads it on its
        first miss instead (refresh_if_changed)."""
        return self.sharing is not None and self.sharing.sync_if_older(_LOOK_SECONDS)

    @property
    def tmp_dir(self) -> str:
        return self._tmp

    def adopt(self, traces: list[tuple[Trace, bytes]], attachments: list[tuple[str, bytes]]) -> int:
        """Traces (each with its encoded form, as it came) and attachments the shared tier holds,
        kept here under this key (never queued for upload again); how many traces were new here."""
        new = 0
        with self._lock:
            index = self.traces_index()
            for trace, data in traces:
                if any(t.ident == trace.ident for t in index.get(trace.key, ())):
                    continue
                new += 1
                self.index.add(trace)
                row = f"t:{trace.key}#{trace.ident}"
                self.index.own.add(row)
                self._write(row, self.signer.seal(row, data))
            for row, data in attachments:
                self._write(row, self.signer.seal(row, data))
        return new

    def adopt_value(self, digest: str, tmp: str) -> None:
        """A value file the shared tier gave (checked under the team key), signed again under this
        key and placed here; removed when it cannot be (quota, disk full): it was loaded already."""
        try:
            size = os.path.getsize(tmp)
            if self.quota is not None and size > self.quota:
                raise OSError(f"{size_text(size)} is more than the store's quota")
            if self.on_room is not None:
                self.on_room(size)
            with open(tmp, "r+b") as f:
                signed = valuefile.signed_part(f)
                mac = self.signer.mac(valuefile.row_key(digest), signed)
                os.pwrite(f.fileno(), mac, 0)
            path = os.path.join(self.path, valuefile.file_name(digest))
            os.makedirs(os.path.dirname(path), mode=0o700, exist_ok=True)
            with self.table.transact():
                if self.table.get(valuefile.row_key(digest)) is None:
                    os.replace(tmp, path)
                    self.table.insert_file(valuefile.row_key(digest), valuefile.file_name(digest), size, self.clock, mac)
        except (OSError, valuefile.Damaged, *WRITE_ERRORS) as e:
            log.debug("nbbuild: a value from the shared tier is not kept here (%s)", e)
        finally:
            if os.path.exists(tmp):
                os.unlink(tmp)

    def adopt_inline(self, digest: str, sealed: bytes) -> None:
        """A small value a pack of the shared tier carried (checked under the team key: `mac |
        blob`), kept here in a row under this key."""
        key = valuefile.row_key(digest)
        blob = sealed[MAC_BYTES:]
        _meta, _buffers, signed = serialisation.split(blob)
        with self._lock:
            if key not in self._pending and self.table.get(key) is None:
                self._write(key, self.signer.seal(key, blob, signed))

    def value_source(self, digest: str) -> str | bytes | None:
        """A value of this key as it is stored: its file's path, or its row (`mac | blob`)."""
        key = valuefile.row_key(digest)
        with self._lock:
            sealed = self._pending.get(key)
        if sealed is not None:
            return sealed
        row = self.table.get(key)
        if row is None or self._theirs(key, *row):
            return None
        value, filename = row
        if filename is not None:
            return os.path.join(self.path, filename) if valuefile.FILE_NAME.match(str(filename)) else None
        return value if type(value) is bytes else None

    def row_data(self, row: str) -> bytes | None:
        """The data of one of this key's signed rows (a trace, an attachment), checked."""
        with self._lock:
            sealed = self._pending.get(row)
        if sealed is None:
            found = self.table.get(row)
            sealed = found[0] if found is not None and type(found[0]) is bytes else None
        data = None if sealed is None else self.signer.open(row, sealed)
        return None if data is None else data.tobytes()

    def mark_upload(self, mark: str) -> None:
        with self._lock:
            self._write(mark, b"")

    def unmark_uploads(self, marks: list[str]) -> None:
        with self._lock:
            for mark in marks:
                self._pending.pop(mark, None)
            try:
                self.delete_rows(marks)
            except WRITE_ERRORS:
                pass     # left marked: uploaded once more by a later process, which is harmless

    def marked_uploads(self, prefix: str) -> list[str]:
        return [key for key, _ in self.table.keys(prefix)]
