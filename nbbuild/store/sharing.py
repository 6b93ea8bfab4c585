"""Sharing: a local store and its shared tier (shared.py) kept in step.

The local store stays the near tier: every build reads and writes it as if it were alone. Sharing
adds two movements:

- Down, on demand. A task about to run (its traces do not match here) first has the shared tier's
  packs read, at most once per build (`sync`): their traces and attachments are copied into the
  local store under this user's key, so the task's next verification may match one of them. A
  value a matched trace needs and the local tier lacks is downloaded (`load`): checked under the
  team key, signed again under the user's, placed as a local value file (within the local quota),
  then loaded.
- Up, in the background. Every trace and attachment the local store records is queued with the
  values it names (its result, its output files' stored copies). After each build's flush
  (`kick`), an uploader thread uploads the values the tier lacks, then the rows as one pack
  (values first, so a trace in the tier always finds its value there). Each queued row is marked
  in the local store (`u:` rows) until its pack is up: a process killed first, or a tier that
  cannot be reached (one warning), leaves them to the next process that shares the store, which
  uploads them then. `readonly` never uploads.

Contract:
- Nothing from the shared tier is used unless the team key verifies it (shared.py).
- The tier unreachable never fails a build: the build goes on with its local tier, one warning
  per process (repeated only after the tier answered again).
- `close(timeout)` (at exit) waits at most `timeout` seconds for the uploads queued so far.
"""
from __future__ import annotations

import atexit
import itertools
import logging
import os
import secrets
import threading
import time
from typing import TYPE_CHECKING, Any

from ..errors import SharedUnreachable
from . import valuefile
from .shared import SharedTier, value_object_bytes
from ..engine.trace import MISSING, Trace

if TYPE_CHECKING:
    from .store import Store

__all__ = ["Sharing"]

log = logging.getLogger("nbbuild")
_UPLOAD_PREFIX = "u:"


class Sharing:
    def __init__(self, store: Store, tier: SharedTier):
        self.store, self.tier = store, tier
        self.readonly = tier.readonly
        self.remote: set[str] = set()        # value hashes the tier's packs say it has
        self.inline: dict[str, bytes] = {}   # small values that came in packs (team MAC | blob)
        self._seen: set[str] = set()         # packs read already
        self._synced = False                 # this build read the tier already
        self._synced_at = 0.0                # when it last read it (time.monotonic)
        self._came = False                   # and traces came from it
        self._sync_lock = threading.Lock()
        self._lock = threading.Lock()
        self._queue: list[tuple[str, tuple[str, ...]]] = []     # (local row, value hashes it names)
        self._wake = threading.Condition(self._lock)
        self._busy = False
        self._stopping = False
        self.down = False                   # the tier did not answer: warned once until it does
        self._thread: threading.Thread | None = None
        self._closed = False
        self._said: set[str] = set()
        self._unmarked: set[str] = set()     # values workers uploaded, not yet named in a pack
        if not self.readonly:
            self._requeue_left()

    # ------------------------------------------------------------ down

    def begin_build(self) -> None:
        self._synced = False

    def sync_if_older(self, seconds: float) -> bool:
        """sync() again when the last look at the tier is older than `seconds` (or there was
        none): between builds, for an explanation, which must not list the tier at every ask."""
        with self._sync_lock:
            if self._synced and time.monotonic() - self._synced_at < seconds:
                return False
            self._synced = False
        return self.sync()

    def sync(self) -> bool:
        """Copy the rows of packs not read yet into the local store, once per build; whether any
        trace came (to a task that waited for another's sync too)."""
        with self._sync_lock:
            if self._synced:
                return self._came
            self._synced, self._came, self._synced_at = True, False, time.monotonic()
            try:
                read, rows = self.tier.rows(self._seen)
            except SharedUnreachable as e:
                self._unreachable(e)
                return False
            self._answered()
            self._seen.update(read)
            traces, attachments = [], []
            for key, data in rows:
                if key.startswith("v:"):
                    self.remote.add(key[2:])
                    if data:
                        self.inline[key[2:]] = data
                elif key.startswith("t:"):
                    try:
                        traces.append((Trace.decode(data), data))
                    except (ValueError, KeyError, TypeError, UnicodeDecodeError):
                        log.warning("nbbuild: a trace in the shared store %s cannot be read; it is not used",
                                    self.tier.url)
                elif key.startswith("a:"):
                    attachments.append((key, data))
            self._came = self.store.adopt(traces, attachments) > 0
            return self._came

    def load(self, digest: str) -> tuple[bool, Any]:
        """(found, (pickle stream, buffers)) of a value downloaded from the tier into the local one
        (a small one came in a pack already)."""
        small = self.inline.pop(digest, None)
        if small is not None:
            got = self.tier.open_inline(digest, small)
            if got is not None:
                self.store.adopt_inline(digest, small)
                return True, got
        tmp = os.path.join(self.store.tmp_dir, f"{os.getpid()}-{secrets.token_hex(6)}.tmp")
        try:
            got = self.tier.fetch_value(digest, tmp)
        except SharedUnreachable as e:
            self._unreachable(e)
            return False, None
        self._answered()
        if got is None:
            return False, None
        self.store.adopt_value(digest, tmp)
        return True, got

    def has_value(self, digest: str) -> bool:
        return digest in self.remote

    def holds_object(self, digest: str) -> bool:
        """Whether the tier holds this value as an object of its own (large: not in a pack)."""
        return digest in self.remote and digest not in self.inline and digest not in self.tier.damaged

    def made_elsewhere(self, digest: str) -> None:
        """A worker put this value in the tier (executors/shared_values.py): the next pack says so."""
        with self._lock:
            self.remote.add(digest)
            self._unmarked.add(digest)

    # ------------------------------------------------------------ up

    def queue(self, row: str, values: tuple[str, ...] = ()) -> None:
        """A local row (a trace or an attachment) to upload with the values it names; marked in
        the local store until it is up."""
        if self.readonly:
            return
        self.store.mark_upload(_UPLOAD_PREFIX + row)
        with self._lock:
            self._queue.append((row, values))

    def queue_trace(self, trace: Trace) -> None:
        values = (trace.result,) + tuple(o[2] for o in trace.outputs if o[2] != MISSING)
        self.queue(f"t:{trace.key}#{trace.ident}", values)

    def kick(self) -> None:
        """Upload what is queued, on the uploader thread."""
        with self._lock:
            if not self._queue or self.readonly:
                return
            if self._thread is None or not self._thread.is_alive():
                if self._thread is None:
                    atexit.register(self._at_exit)
                self._thread = threading.Thread(target=self._run, name="nbbuild-upload", daemon=True)
                self._thread.start()
            self._wake.notify()

    def _run(self) -> None:
        while True:
            with self._lock:
                while not self._queue and not self._stopping:
                    self._wake.wait()
                if not self._queue:
                    return
                batch, self._queue = self._queue, []
                self._busy = True
            done = False
            try:
                done = self._upload(batch)
            finally:
                with self._lock:
                    self._busy = False
                    if not done:
                        self._queue[:0] = batch
                    self._wake.notify_all()
            if not done:
                return          # the next kick (the next build) tries again

    def _upload(self, batch: list[tuple[str, tuple[str, ...]]]) -> bool:
        rows: list[tuple[str, bytes]] = []
        uploaded: list[str] = []
        try:
            for row, values in batch:
                for digest in values:
                    if digest in self._unmarked:
                        self._unmarked.discard(digest)
                        rows.append(("v:" + digest, b""))
                    if (digest in self.remote and digest not in self.tier.damaged) or digest in uploaded:
                        continue
                    source = self.store.value_source(digest)
                    if source is None:
                        continue        # evicted here meanwhile: the trace goes up without it
                    uploaded.append(digest)
                    chunks = value_object_bytes(digest, source, self.tier.signer)
                    if isinstance(source, str):
                        try:
                            first = next(iter(chunks))      # reads the local file's header
                        except valuefile.Damaged:           # damaged here: a load here says so; not sent
                            uploaded.pop()
                            continue
                        self.tier.put_value(digest, itertools.chain([first], chunks))
                        rows.append(("v:" + digest, b""))
                    else:               # small (kept in a row here): it goes in the pack, not alone
                        rows.append(("v:" + digest, b"".join(chunks)))
                data = self.store.row_data(row)
                if data is not None:
                    rows.append((row, data))
            self.tier.put_rows(rows)
        except SharedUnreachable as e:
            self._unreachable(e)
            return False
        except OSError as e:            # a local value file removed while it was read: next time
            log.debug("nbbuild: an upload to %s failed (%s)", self.tier.url, e)
            return False
        except Exception as e:  # noqa: BLE001 - on its own thread: a traceback there would reach the user
            if "upload" not in self._said:
                self._said.add("upload")
                log.warning("nbbuild: uploading to the shared store %s failed (%s: %s); what this session "
                            "stored stays here and is uploaded by a later one", self.tier.url, type(e).__name__, e)
            return False
        self._answered()
        self.remote.update(uploaded)
        self.store.unmark_uploads([_UPLOAD_PREFIX + row for row, _ in batch])
        return True

    def _requeue_left(self) -> None:
        """Rows a previous process queued and did not get up (killed, or the tier unreachable)."""
        left = self.store.marked_uploads(_UPLOAD_PREFIX)
        for mark in left:
            row = mark[len(_UPLOAD_PREFIX):]
            values: tuple[str, ...] = ()
            if row.startswith("t:"):
                data = self.store.row_data(row)
                if data is None:
                    continue
                try:
                    trace = Trace.decode(data)
                except (ValueError, KeyError, TypeError, UnicodeDecodeError):
                    continue
                values = (trace.result,) + tuple(o[2] for o in trace.outputs if o[2] != MISSING)
            self._queue.append((row, values))

    def pending(self) -> int:
        with self._lock:
            return len(self._queue) + (1 if self._busy else 0)

    def close(self, timeout: float) -> int:
        """Wait at most `timeout` seconds for the queued uploads; how many rows are left (they stay
        marked for the next process)."""
        self.kick()
        self._closed = True
        deadline = time.monotonic() + timeout
        with self._lock:
            self._stopping = True
            self._wake.notify_all()
            while (self._queue or self._busy) and self._thread is not None and self._thread.is_alive():
                left = deadline - time.monotonic()
                if left <= 0:
                    break
                self._wake.wait(left)
            return len(self._queue)

    def _at_exit(self) -> None:
        if self._closed:
            return
        left = self.close(self.tier.wait)
        if left and not self.down:       # a tier that did not answer said so, and that they wait
            log.warning("nbbuild: %d traces were not uploaded to the shared store %s yet; they are uploaded "
                        "by the next session that uses this store", left, self.tier.url)

    # ------------------------------------------------------------ reachability

    def _unreachable(self, e: SharedUnreachable) -> None:
        if not self.down:
            self.down = True
            log.warning("nbbuild: %s; this build goes on with the local store, and what it stores is "
                        "uploaded when the shared store answers again", e)

    def _answered(self) -> None:
        self.down = False
